"""The fused CPU kernel: packed 2/4-bit codes times activations, no dequantized weight in memory.

Built on first use with torch.utils.cpp_extension (gcc, -O3 -march=native, OpenMP) and cached by
torch under ~/.cache/torch_extensions. If no compiler is present or the build fails, `available()`
is False and QuantLinear falls back to its torch paths (the reason is kept for error messages).
Set QUANT_FUSED_CPU=0 to disable it.

Per group, y[row] += s * sum_j(q_j * x_j) + b * sum_j(x_j) with b = -s * z, so only bits/8 bytes per
weight (plus the group's scale and offset) are read from memory instead of 4. Tiles of `tile_rows`
rows run in parallel over OpenMP threads; every tile has the same amount of work (the alignment
constraint).

Where the compiler targets AVX-512 (-march=native on this machine's Xeon), 16 codes at a time are
decoded by one broadcast (2-bit: one word; 4/8-bit: a masked load and a lane permute), a variable
shift and a mask, converted to floats and multiplied into x with one FMA; a group's partial sum is
scaled once and kept in a vector accumulator per output row, reduced once when the row ends. The
loop over a group's 16-code chunks is unrolled for groups of 32 and 64 at batch 1 (decoding). The
arithmetic stays float32, so the kernel matches the dequantized reference within float tolerance
(int8 activations with VNNI would be faster but change the numbers). Elsewhere a portable loop
that the compiler vectorizes does the same.
"""

from __future__ import annotations

from components.quant.extension import InlineExtension

_SOURCE = r"""
#include <torch/extension.h>
#include <cstdint>
#include <vector>

// One group's codes times x, accumulated lane-wise into acc[PER] (lane k holds codes k, k+PER, ...):
// a broadcast word, a vector of shifts and a mask decode PER codes at once; signed int -> float
// conversion vectorizes directly (AVX-512 / AVX2), unsigned would not.
template <int BITS>
static inline void group_lanes(const int32_t* words, int nwords, const float* x, float scale, float* acc) {
  constexpr int PER = 32 / BITS;
  constexpr int32_t MASK = (1 << BITS) - 1;
  float part[PER];
#pragma omp simd
  for (int k = 0; k < PER; ++k) part[k] = 0.f;
  for (int w = 0; w < nwords; ++w) {
    const uint32_t word = (uint32_t)words[w];
    const float* xw = x + w * PER;
#pragma omp simd
    for (int k = 0; k < PER; ++k) part[k] += (float)((int32_t)(word >> (BITS * k)) & MASK) * xw[k];
  }
#pragma omp simd
  for (int k = 0; k < PER; ++k) acc[k] += scale * part[k];
}

// All groups of one precision in one tile. Per (output row, input row) the lanes stay in a vector
// accumulator; the horizontal sum happens once per tile, not once per group.
template <int BITS>
static void tile_groups(const int32_t* codes, const int32_t* rows, const int32_t* cols, const float* scale,
                        const float* bias, int64_t n_groups, int64_t R, int64_t G, int64_t g, const float* x,
                        const float* xsum, int64_t in_f, int64_t N, float* y_tile) {
  constexpr int PER = 32 / BITS;
  const int nwords = (int)(g * BITS / 32);
  std::vector<float> acc((size_t)(R * N * PER), 0.f);
  for (int64_t i = 0; i < n_groups; ++i) {
    const int64_t r = rows[i], c = cols[i];
    const int32_t* wd = codes + i * nwords;
    for (int64_t n = 0; n < N; ++n) {
      group_lanes<BITS>(wd, nwords, x + n * in_f + c * g, scale[i], acc.data() + (r * N + n) * PER);
      y_tile[r * N + n] += bias[i] * xsum[n * G + c];
    }
  }
  for (int64_t rn = 0; rn < R * N; ++rn) {
    float s = 0.f;
    for (int k = 0; k < PER; ++k) s += acc[rn * PER + k];
    y_tile[rn] += s;
  }
}

#if defined(__AVX512F__) && defined(__AVX512VL__)
#include <immintrin.h>
#include <algorithm>
#define QUANT_AVX512 1

// 16 consecutive codes of a group -> 16 float lanes. The chunk's BITS/2 words are loaded with a mask
// (never past the buffer's end); lane k takes word k / PER shifted right by BITS * (k % PER).
template <int BITS>
struct Decode16 {
  static constexpr int PER = 32 / BITS;     // codes per int32 word
  static constexpr int WORDS = 16 / PER;    // words per 16 codes: 1 (2-bit), 2 (4-bit), 4 (8-bit)
  __m512i idx, shift, mask;
  Decode16() {
    alignas(64) int32_t i[16], s[16];
    for (int k = 0; k < 16; ++k) { i[k] = k / PER; s[k] = BITS * (k % PER); }
    idx = _mm512_load_si512(i);
    shift = _mm512_load_si512(s);
    mask = _mm512_set1_epi32((1 << BITS) - 1);
  }
  inline __m512 operator()(const int32_t* words) const {
    __m512i w;
    if constexpr (WORDS == 1) {
      w = _mm512_set1_epi32(*words);  // one broadcast load, no permute
    } else {
      w = _mm512_permutexvar_epi32(idx, _mm512_castsi128_si512(_mm_maskz_loadu_epi32((__mmask8)((1 << WORDS) - 1), words)));
    }
    return _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(w, shift), mask));
  }
};

// The groups of one precision in one tile for NB batch rows, in storage order (row-major, so the
// groups of an output row are consecutive): per row a vector accumulator per batch row, reduced once
// when the row ends. Decoded codes are reused across the NB batch rows.
template <int BITS, int NB, int CHUNKS>
static void tile_groups_avx512(const int32_t* codes, const int32_t* rows, const int32_t* cols, const float* scale,
                               const float* bias, int64_t n_groups, int64_t G, int64_t g, const float* x,
                               const float* xsum, int64_t in_f, int64_t N, float* y_tile) {
  const Decode16<BITS> decode;
  constexpr int WPC = Decode16<BITS>::WORDS;
  const int chunks = CHUNKS ? CHUNKS : (int)(g / 16), nwords = chunks * WPC;  // CHUNKS > 0: unrolled at compile time
  __m512 acc[NB];
  float bacc[NB];
  int64_t row = -1;
  auto flush = [&]() {
    if (row < 0) return;
    for (int n = 0; n < NB; ++n) y_tile[row * N + n] += _mm512_reduce_add_ps(acc[n]) + bacc[n];
  };
  for (int64_t i = 0; i < n_groups; ++i) {
    if (rows[i] != row) {
      flush();
      row = rows[i];
      for (int n = 0; n < NB; ++n) { acc[n] = _mm512_setzero_ps(); bacc[n] = 0.f; }
    }
    const int64_t c = cols[i];
    const int32_t* wd = codes + i * nwords;
    const float* xg = x + c * g;
    __m512 part[NB];
    for (int n = 0; n < NB; ++n) part[n] = _mm512_setzero_ps();
    for (int j = 0; j < chunks; ++j) {
      const __m512 q = decode(wd + j * WPC);
      for (int n = 0; n < NB; ++n) part[n] = _mm512_fmadd_ps(q, _mm512_loadu_ps(xg + n * in_f + j * 16), part[n]);
    }
    const __m512 s = _mm512_set1_ps(scale[i]);
    for (int n = 0; n < NB; ++n) {
      acc[n] = _mm512_fmadd_ps(part[n], s, acc[n]);
      bacc[n] += bias[i] * xsum[n * G + c];
    }
  }
  flush();
}

// Batch rows in blocks of up to 8 (the fused path serves N <= FUSED_MAX_ROWS).
template <int BITS>
static void tile_avx512(const int32_t* codes, const int32_t* rows, const int32_t* cols, const float* s, const float* b,
                        int64_t n, int64_t G, int64_t g, const float* x, const float* xsum, int64_t in_f, int64_t N,
                        float* y) {
  for (int64_t n0 = 0; n0 < N; n0 += 8) {
    const float* xb = x + n0 * in_f;
    const float* xsb = xsum + n0 * G;
    float* yb = y + n0;
    const int64_t nb = std::min<int64_t>(8, N - n0);
    if (nb == 1 && g == 32) { tile_groups_avx512<BITS, 1, 2>(codes, rows, cols, s, b, n, G, g, xb, xsb, in_f, N, yb); continue; }
    if (nb == 1 && g == 64) { tile_groups_avx512<BITS, 1, 4>(codes, rows, cols, s, b, n, G, g, xb, xsb, in_f, N, yb); continue; }
    switch (nb) {
      case 1: tile_groups_avx512<BITS, 1, 0>(codes, rows, cols, s, b, n, G, g, xb, xsb, in_f, N, yb); break;
      case 2: tile_groups_avx512<BITS, 2, 0>(codes, rows, cols, s, b, n, G, g, xb, xsb, in_f, N, yb); break;
      case 3: tile_groups_avx512<BITS, 3, 0>(codes, rows, cols, s, b, n, G, g, xb, xsb, in_f, N, yb); break;
      case 4: tile_groups_avx512<BITS, 4, 0>(codes, rows, cols, s, b, n, G, g, xb, xsb, in_f, N, yb); break;
      case 5: tile_groups_avx512<BITS, 5, 0>(codes, rows, cols, s, b, n, G, g, xb, xsb, in_f, N, yb); break;
      case 6: tile_groups_avx512<BITS, 6, 0>(codes, rows, cols, s, b, n, G, g, xb, xsb, in_f, N, yb); break;
      case 7: tile_groups_avx512<BITS, 7, 0>(codes, rows, cols, s, b, n, G, g, xb, xsb, in_f, N, yb); break;
      default: tile_groups_avx512<BITS, 8, 0>(codes, rows, cols, s, b, n, G, g, xb, xsb, in_f, N, yb); break;
    }
  }
}
#endif

static void dispatch(int bits, const int32_t* codes, const int32_t* rows, const int32_t* cols, const float* s,
                     const float* b, int64_t n, int64_t R, int64_t G, int64_t g, const float* x, const float* xsum,
                     int64_t in_f, int64_t N, float* y) {
#ifdef QUANT_AVX512
  switch (bits) {
    case 2: tile_avx512<2>(codes, rows, cols, s, b, n, G, g, x, xsum, in_f, N, y); return;
    case 4: tile_avx512<4>(codes, rows, cols, s, b, n, G, g, x, xsum, in_f, N, y); return;
    case 8: tile_avx512<8>(codes, rows, cols, s, b, n, G, g, x, xsum, in_f, N, y); return;
    default: return;
  }
#endif
  switch (bits) {
    case 2: tile_groups<2>(codes, rows, cols, s, b, n, R, G, g, x, xsum, in_f, N, y); break;
    case 4: tile_groups<4>(codes, rows, cols, s, b, n, R, G, g, x, xsum, in_f, N, y); break;
    case 8: tile_groups<8>(codes, rows, cols, s, b, n, R, G, g, x, xsum, in_f, N, y); break;
    default: break;
  }
}

torch::Tensor fused_matmul(torch::Tensor x, torch::Tensor codes_lo, torch::Tensor pos_lo, torch::Tensor s_lo,
                           torch::Tensor b_lo, torch::Tensor codes_hi, torch::Tensor pos_hi, torch::Tensor s_hi,
                           torch::Tensor b_hi, int64_t R, int64_t G, int64_t g, int64_t bits_lo, int64_t bits_hi) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.is_contiguous() && x.dim() == 2, "x must be contiguous float32 [N, in]");
  TORCH_CHECK(bits_lo == 2 || bits_lo == 4 || bits_lo == 8, "bits_lo must be 2, 4 or 8");
  TORCH_CHECK(bits_hi == 2 || bits_hi == 4 || bits_hi == 8, "bits_hi must be 2, 4 or 8");
  const int64_t N = x.size(0), in_f = x.size(1), T = codes_lo.size(0);
  TORCH_CHECK(in_f == G * g, "x has ", in_f, " features, layer expects ", G * g);
  auto xsum = torch::empty({N, G}, x.options());  // per (batch row, group column): sum of x, for the zeros' term
  auto y = torch::zeros({T * R, N}, x.options());
  {
    const float* xr = x.data_ptr<float>();
    float* xs = xsum.data_ptr<float>();
    for (int64_t k = 0; k < N * G; ++k) {
      float acc = 0.f;
      for (int64_t j = 0; j < g; ++j) acc += xr[k * g + j];
      xs[k] = acc;
    }
  }
  const int64_t n_lo = s_lo.size(1), n_hi = s_hi.size(1);
  const int64_t w_lo = codes_lo.size(1), w_hi = codes_hi.size(1);
  const float* xp = x.data_ptr<float>();
  const float* xs = xsum.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int32_t* cl = codes_lo.data_ptr<int32_t>();
  const int32_t* ch = codes_hi.data_ptr<int32_t>();
  // pos_* hold (row within tile, group column) pairs: [T, n, 2] int32, precomputed at load.
  const int32_t* pl = pos_lo.data_ptr<int32_t>();
  const int32_t* ph = pos_hi.data_ptr<int32_t>();
  const float* sl = s_lo.data_ptr<float>();
  const float* bl = b_lo.data_ptr<float>();
  const float* sh = s_hi.data_ptr<float>();
  const float* bh = b_hi.data_ptr<float>();
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    float* yt = yp + t * R * N;
    dispatch((int)bits_lo, cl + t * w_lo, pl + t * 2 * n_lo, pl + t * 2 * n_lo + n_lo, sl + t * n_lo, bl + t * n_lo,
             n_lo, R, G, g, xp, xs, in_f, N, yt);
    dispatch((int)bits_hi, ch + t * w_hi, ph + t * 2 * n_hi, ph + t * 2 * n_hi + n_hi, sh + t * n_hi, bh + t * n_hi,
             n_hi, R, G, g, xp, xs, in_f, N, yt);
  }
  return y.t();
}
"""

_EXTENSION = InlineExtension(
    "quant_fused_cpu_v5", _SOURCE, ["fused_matmul"], ["-O3", "-march=native", "-fopenmp"], disable_env="QUANT_FUSED_CPU"
)
load = _EXTENSION.load  # the compiled extension, built on first call; None when it cannot be built here


def available() -> bool:
    return load() is not None


def unavailable_reason() -> str:
    return _EXTENSION.reason
