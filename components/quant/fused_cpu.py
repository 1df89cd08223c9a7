"""The fused CPU kernel: packed 2/4-bit codes times activations, no dequantized weight in memory.

Built on first use with torch.utils.cpp_extension (gcc, -O3 -march=native, OpenMP) and cached by
torch under ~/.cache/torch_extensions. If no compiler is present or the build fails, `available()`
is False and QuantLinear falls back to its torch paths (the reason is kept for error messages).
Set QUANT_FUSED_CPU=0 to disable it.

Per group, y[row] += s * sum_j(q_j * x_j) + b * sum_j(x_j) with b = -s * z: the codes are decoded
by a broadcast word, a vector of shifts and a mask (one AVX lane per code of the word), so only
bits/8 bytes per weight are read from memory instead of 4. Tiles of `tile_rows` rows run in
parallel over OpenMP threads; every tile has the same amount of work (the alignment constraint).
"""
from __future__ import annotations

import os
import threading

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

static void dispatch(int bits, const int32_t* codes, const int32_t* rows, const int32_t* cols, const float* s,
                     const float* b, int64_t n, int64_t R, int64_t G, int64_t g, const float* x, const float* xsum,
                     int64_t in_f, int64_t N, float* y) {
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
  auto xsum = x.view({N, G, g}).sum(-1).contiguous();
  auto y = torch::zeros({T * R, N}, x.options());
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

_lock = threading.Lock()
_state: dict = {"module": None, "tried": False, "reason": "not built yet"}


def load():
    """The compiled extension, building it on first call; None when it cannot be built here."""
    with _lock:
        if _state["tried"]:
            return _state["module"]
        _state["tried"] = True
        if os.environ.get("QUANT_FUSED_CPU", "1") == "0":
            _state["reason"] = "disabled by QUANT_FUSED_CPU=0"
            return None
        try:
            from torch.utils.cpp_extension import load_inline

            _state["module"] = load_inline(
                name="quant_fused_cpu_v2", cpp_sources=[_SOURCE], functions=["fused_matmul"],
                extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as exc:  # no compiler, no ninja, or a build error: fall back to torch paths
            _state["reason"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        return _state["module"]


def available() -> bool:
    return load() is not None


def unavailable_reason() -> str:
    return _state["reason"]
