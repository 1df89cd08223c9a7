"""The integer CPU kernel: int8 activations times packed 2/4/8-bit codes with integer dot products.

Built on first use with torch.utils.cpp_extension (gcc -O3, OpenMP) like `fused_cpu.py`, whose float
kernel stays the reference and fallback. Set QUANT_INT_KERNEL=0 to disable it.

Per call, every activation row is quantized to int8 in blocks of 32 (llama.cpp's Q8 blocks):
d = max|x| / 127, a = round(x / d), and the block's exact float sum is kept. Per weight group
(w = s * q + m, codes q unsigned), per 32-code block k of the group:

    y += s * d_k * sum_j(q_j * a_j)   (an int32 dot product: vpdpbusd, u8 codes x s8 activations)
       + m * sum_j(x_j)               (the group minimum times the block's float sum, once per group)

so only the packed codes and the group's metadata are read. The project's packing puts codes 2b, 2b+1
in byte b (4-bit) and 4b..4b+3 (2-bit), so instead of shuffling the codes the activation block is
stored once per call in the matching order. On the VNNI paths a one-precision stream's codes stay
where they sit in their byte: one broadcast load and one mask per block (a 4-bit high nibble counts
16x, a 2-bit field at bit 2s counts 4^s; vpdpbusd does not saturate and every int32 lane sums one field
position, so the accumulator's lanes are rescaled once per row). Per block that leaves a mask, one
vpdpbusd, one convert and one FMA (four independent accumulators at batch 1 hide the FMA latency).

Error bound (tested): the only approximation is the activation rounding, |x - d a| <= d / 2 per
element, and the minimum's term uses the exact sum, so per output |y - x W_hat^T| <= sum over blocks
of d_k / 2 * sum_j |s q_j| (plus float rounding). act_levels=2 adds the rounding residual as a second
int8 level r in steps of d / 256 (clamped to +-127), combined exactly in int32 as 256 dot(q, a) +
dot(q, r): per element |x - d (a + r / 256)| <= d / 256.

Layout (the paper's alignment): tiles of R output rows; every tile's low-bit and high-bit codes are
two streams of equal length per tile, tile t starting at t * stride, and a per-tile bit map says
which group (row-major in the tile) is high-bit. A kernel thread takes whole tiles. A mixed row walks
each stream with a list of its blocks' columns, built from the map 8 groups per step (a table of set
bit positions; vpcompressd on AVX-512). Walking the row in column order with both streams' next
blocks expanded and the map bit selecting one has no data-dependent branch, but measured on AVX2 it
took twice as long as the two lists with their two mispredicted loop exits per row. Rows of one
stream on AVX2 go four at a time at batch 1 (`rows4_g32`): a short row's setup and reduction cost
about as much as its blocks.
Split layout (mixed 2/4-bit matrices, `PackedMatrix.split_streams`): a 4-bit code is q = 4 h + l,
so the tile's groups become one dense 2-bit stream (low groups' codes, high groups' h) read four
rows per step like a one-precision matrix, and a stream of the high groups' l. After the dense pass
each high group adds s (3 h + l) . a, h re-read from cache: on rows of up to 32 groups in one flat
pass over the tile's high groups (positions from the map, 8 per step; a trip count the same in every
tile), on longer rows row by row with a set-bit loop (one mispredicted exit per row, spread over
its many high groups).
Metadata: scales as u8 codes with a per-row base (s = (c + 1) * base, the project's second-order
format) or fp16; minimums as u8 codes with a per-row (offset, step) or fp16 (GGUF Q4_1's d and m are
fp16), converted 8 groups per step together with the per-block scales s * d and the minimum's term.

Paths, chosen at run time by CPU feature (`paths()`, `best_path()`): avx512_vnni (EVEX vpdpbusd on
256-bit blocks, masked loads, vpcompressd block lists), avx_vnni (VEX vpdpbusd), avx2 (vpmaddubsw +
vpmaddwd on true code values: vpmaddubsw saturates), portable (scalar C). All share one source,
compiled once per path with a GCC target pragma. On avx2, rows of one stream (32-code groups)
convert their metadata 8 groups at a time inside the block loop (`row_g32`, `rows4_g32`), and every
vector path quantizes the activations 32 per step.

Callers: `int_matmul` (one product, its own OpenMP region), `ProductChain` (several products of one
input in one call and one region) and `LeanPlan` (a whole Llama forward in one call).
"""

from __future__ import annotations

import os

from components.quant.extension import InlineExtension

PATHS = ("avx512_vnni", "avx_vnni", "avx2", "portable")
_TARGETS = {
    "avx512_vnni": "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c,bmi,bmi2",
    "avx_vnni": "avxvnni,avx2,fma,f16c,bmi,bmi2",
    "avx2": "avx2,fma,f16c,bmi,bmi2",
    "portable": None,
}
_ISA_MACRO = {"avx512_vnni": "ISA_VNNI512", "avx_vnni": "ISA_AVXVNNI", "avx2": "ISA_AVX2", "portable": "ISA_PORTABLE"}

_HEADER = r"""
#include <torch/extension.h>
#include <immintrin.h>
#include <cstdint>
#include <cstring>
#include <cmath>
#include <vector>
#include <omp.h>
#include <atomic>
#include <sched.h>

static inline float half_to_float(uint16_t h) {  // IEEE binary16 -> float, subnormals included
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) { bits = sign; }
    else { float f = std::ldexp((float)man, -24); std::memcpy(&bits, &f, 4); bits |= sign; }
  } else if (exp == 31) { bits = sign | 0x7f800000u | (man << 13); }
  else { bits = sign | ((exp + 112) << 23) | (man << 13); }
  float out; std::memcpy(&out, &bits, 4); return out;
}

struct Meta {  // a layer's per-group scale and minimum, in one of two formats each
  int scale_kind, min_kind;  // 0: u8 codes + per-row base, 1: fp16 per group
  const uint8_t* scale_u8; const float* scale_base; const uint16_t* scale_f16;
  const uint8_t* min_u8; const float* min_base; const uint16_t* min_f16;
  int64_t G;
};

// Activations: per batch row, per 32-block: d, the float sum, and the int8 codes in three orders
// (8-bit codes: natural; 4-bit: evens then odds; 2-bit: position 8 s + j holds element 4 j + s).
struct Acts {
  int64_t N, K, B;  // rows, features, 32-blocks per row
  int64_t res;      // 0, or N * K: offset of the residual codes (second int8 level, step d / 256)
  std::vector<float> d, sum;
  std::vector<int8_t> a8, a4, a2;
  std::vector<int8_t> q4, q2;  // a4 and a2 in AVX2's wide order (interleave_blocks; rows4_g32 reads them)
  int64_t G = 0;            // weight groups per row (set by group_activations)
  std::vector<float> dsc;   // d, times 1/256 with the residual level (the combined dot is 256 a + r)
  std::vector<float> gsum;  // per weight group: the float sum of its activations (the minimum's term)
};

static void group_activations(Acts& A, int64_t g) {
  const int64_t sub = g / 32;
  A.G = A.K / g;
  // 8 floats of padding: the AVX2 row loop reads its metadata 8 groups at a time (the tail masked)
  A.dsc.resize(A.N * A.B + 8); A.gsum.assign(A.N * A.G + 8, 0.f);
  const float rs = A.res ? 1.f / 256.f : 1.f;
  for (int64_t i = 0; i < A.N * A.B; ++i) A.dsc[i] = A.d[i] * rs;
  for (int64_t n = 0; n < A.N; ++n)
    for (int64_t b = 0; b < A.B; ++b) A.gsum[n * A.G + b / sub] += A.sum[n * A.B + b];
}

// Sizes A's buffers for x [N, K] (they are reused across calls: the whole-model forward keeps one).
static void size_acts(Acts& A, int64_t N, int64_t K, bool need8, bool need4, bool need2, bool residual) {
  A.N = N; A.K = K; A.B = K / 32; A.res = residual ? N * K : 0;
  const int64_t levels = residual ? 2 : 1;
  A.d.resize(N * A.B); A.sum.resize(N * A.B);
  if (need8) A.a8.resize(levels * N * K);
  if (need4) A.a4.resize(levels * N * K);
  if (need2) A.a2.resize(levels * N * K);
}

// The scalar quantizer (the portable path; the vector paths compute the same codes, 8 lanes at a time).
static void quantize_acts_scalar(Acts& A, const float* x, int64_t N, int64_t K, bool need8, bool need4, bool need2, bool residual) {
  size_acts(A, N, K, need8, need4, need2, residual);
  const int64_t levels = residual ? 2 : 1;
  int8_t q[2][32];
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t b = 0; b < A.B; ++b) {
      const float* xb = x + n * K + b * 32;
      float amax = 0.f, s = 0.f;
      for (int j = 0; j < 32; ++j) { amax = std::max(amax, std::fabs(xb[j])); s += xb[j]; }
      const float d = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
      for (int j = 0; j < 32; ++j) {
        const float v = std::min(127.f, std::max(-127.f, std::nearbyint(xb[j] * inv)));
        q[0][j] = (int8_t)v;
        // second level: the rounding residual, |x - d a| <= d / 2, in steps of d / 256 (clamped to +-127)
        const float r = amax > 0.f ? (xb[j] - d * v) * (256.f / d) : 0.f;
        q[1][j] = (int8_t)std::min(127.f, std::max(-127.f, std::nearbyint(r)));
      }
      A.d[n * A.B + b] = d; A.sum[n * A.B + b] = s;
      for (int64_t l = 0; l < levels; ++l) {
        const int64_t o = l * N * K + n * K + b * 32;
        const int8_t* ql = q[l];
        if (need8) for (int j = 0; j < 32; ++j) A.a8[o + j] = ql[j];
        if (need4) for (int j = 0; j < 16; ++j) { A.a4[o + j] = ql[2 * j]; A.a4[o + 16 + j] = ql[2 * j + 1]; }
        if (need2) for (int s2 = 0; s2 < 4; ++s2) for (int j = 0; j < 8; ++j) A.a2[o + 8 * s2 + j] = ql[4 * j + s2];
      }
    }
  }
}

struct Scratch {  // per thread: one row's block lists, group metadata, per-block scales
  std::vector<int32_t> lo, hi, identity;
  std::vector<float> s, m, sd;
  std::vector<int32_t> tile_high;  // the split layout: a tile's high groups (sized on first use)
  std::vector<float> tile_acc;     // and their sums per row, SPLIT_WAYS of 8 floats each
  std::vector<float> tile_scale;   // the tile's group scales times their blocks' d (rows4_g32 keeps them)
  Scratch(int64_t G, int64_t nblk, int nb_max)
      : lo(nblk + 16), hi(nblk + 16), identity(nblk), s(G + 8), m(G + 8), sd(nb_max * nblk + 8) {
    for (int64_t b = 0; b < nblk; ++b) identity[b] = (int32_t)b;
  }
};

// SET_BITS.pos[m]: the positions of the set bits of byte m, in order (the rest 0): a row's block lists
// are built 8 groups per step from its map.
struct SetBits {
  uint8_t pos[256][8];
  constexpr SetBits() : pos() {
    for (int m = 0; m < 256; ++m) {
      int k = 0;
      for (int j = 0; j < 8; ++j) if (m >> j & 1) pos[m][k++] = (uint8_t)j;
    }
  }
};
alignas(64) static constexpr SetBits SET_BITS{};

static inline uint64_t map_bits(const uint8_t* map, int64_t map_bytes, int64_t bitpos, int n) {
  // n <= 56 bits of a tile's map from bit `bitpos`, never reading past the tile's bytes
  uint64_t w = 0;
  const int64_t byte = bitpos >> 3;
  if (byte + 8 <= map_bytes) std::memcpy(&w, map + byte, 8);  // a fixed size: one load, no call
  else for (int64_t k = 0; k < map_bytes - byte; ++k) w |= (uint64_t)map[byte + k] << (8 * k);
  w >>= (bitpos & 7);
  return n >= 64 ? w : (w & ((1ull << n) - 1));
}

"""

# One copy of this per path, inside `namespace <path>` under a GCC target pragma.
_BODY = r"""
// ---- per-ISA block products -------------------------------------------------------------------
// block_acc<BITS, NB, RES>: one 32-code block of the weight stream times NB activation blocks,
// acc[n] += sd[n * nblk] * dot (dot = 256 * dot(w, a1) + dot(w, a2) with the residual level).
#if defined(ISA_PORTABLE)
typedef float Acc;
static inline void acc_zero(Acc& a) { a = 0.f; }

template <int BITS>
static inline void unpack_scalar(const uint8_t* p, uint8_t* w) {  // 32 codes -> bytes in the activation order
  if (BITS == 8) { for (int j = 0; j < 32; ++j) w[j] = p[j]; }
  else if (BITS == 4) { for (int j = 0; j < 16; ++j) { w[j] = p[j] & 15; w[16 + j] = p[j] >> 4; } }
  else { for (int s = 0; s < 4; ++s) for (int j = 0; j < 8; ++j) w[8 * s + j] = (p[j] >> (2 * s)) & 3; }
}

template <int BITS, int NB, bool RES>
static inline void block_acc(const uint8_t* p, const int8_t* a, int64_t K, int64_t res, const float* sd,
                             int64_t nblk, Acc* acc) {
  uint8_t w[32];
  unpack_scalar<BITS>(p, w);
  for (int n = 0; n < NB; ++n) {
    int32_t dot = 0;
    for (int j = 0; j < 32; ++j) dot += (int32_t)w[j] * (int32_t)a[n * K + j];
    if (RES) {
      int32_t dot2 = 0;
      for (int j = 0; j < 32; ++j) dot2 += (int32_t)w[j] * (int32_t)a[res + n * K + j];
      dot = dot * 256 + dot2;
    }
    acc[n] += sd[n * nblk] * (float)dot;
  }
}
#else
typedef __m256 Acc;
static inline void acc_zero(Acc& a) { a = _mm256_setzero_ps(); }
static inline float hsum(const __m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 32 codes at their true values, in the activation order: a shift, a mask (and an insert for 4-bit).
template <int BITS>
static inline __m256i expand_codes(const uint8_t* p) {
  if constexpr (BITS == 8) {
    return _mm256_loadu_si256((const __m256i*)p);
  } else if constexpr (BITS == 4) {
    const __m128i v = _mm_loadu_si128((const __m128i*)p), low = _mm_set1_epi8(0x0f);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), low), _mm_and_si128(v, low));
  } else {
    int64_t word; std::memcpy(&word, p, 8);
    const __m256i v = _mm256_srlv_epi64(_mm256_set1_epi64x(word), _mm256_set_epi64x(6, 4, 2, 0));
    return _mm256_and_si256(v, _mm256_set1_epi8(0x03));
  }
}

#if defined(ISA_AVX2)
// vpmaddubsw saturates at int16: the codes are expanded to their true values (shift, mask, insert).
template <int BITS>
static inline __m256i load_codes(const uint8_t* p) { return expand_codes<BITS>(p); }
template <int BITS> static inline __m256 acc_scaled(const Acc& v, __m256 into) { return _mm256_add_ps(v, into); }
#else
// VNNI: the codes stay where they sit in their byte (one broadcast load and one mask): a 4-bit high
// nibble counts 16x, a 2-bit field at bit 2 s counts 4^s. vpdpbusd does not saturate, and each
// int32 lane sums one field position only, so the accumulator's lanes are rescaled once per row.
template <int BITS>
static inline __m256i load_codes(const uint8_t* p) {
  if constexpr (BITS == 8) {
    return _mm256_loadu_si256((const __m256i*)p);
  } else if constexpr (BITS == 4) {
    const __m256i mask = _mm256_set_m128i(_mm_set1_epi8((char)0xf0), _mm_set1_epi8(0x0f));
    return _mm256_and_si256(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)p)), mask);
  } else {
    int64_t word; std::memcpy(&word, p, 8);
    const __m256i mask = _mm256_set_epi64x((int64_t)0xc0c0c0c0c0c0c0c0ull, 0x3030303030303030ll,
                                           0x0c0c0c0c0c0c0c0cll, 0x0303030303030303ll);
    return _mm256_and_si256(_mm256_set1_epi64x(word), mask);
  }
}
template <int BITS> static inline __m256 acc_scaled(const Acc& v, __m256 into) {  // into + v * lane weights
  if constexpr (BITS == 8) return _mm256_add_ps(v, into);
  else if constexpr (BITS == 4)
    return _mm256_fmadd_ps(v, _mm256_set_ps(0.0625f, 0.0625f, 0.0625f, 0.0625f, 1.f, 1.f, 1.f, 1.f), into);
  else
    return _mm256_fmadd_ps(v, _mm256_set_ps(1.f / 64, 1.f / 64, 1.f / 16, 1.f / 16, 0.25f, 0.25f, 1.f, 1.f), into);
}
#endif

// src + (u8 codes x s8 activations summed over 4-byte lanes) -> 8 int32
template <int BITS>
static inline __m256i dot_add(__m256i src, __m256i w, __m256i a) {
#if defined(ISA_VNNI512)
  return _mm256_dpbusd_epi32(src, w, a);
#elif defined(ISA_AVXVNNI)
  return _mm256_dpbusd_avx_epi32(src, w, a);
#else
  const __m256i ones = _mm256_set1_epi16(1);
  if constexpr (BITS == 8) {  // u8 x s8 pairs would saturate int16: split the codes into nibbles
    const __m256i low = _mm256_set1_epi8(0x0f);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), low), lo = _mm256_and_si256(w, low);
    return _mm256_add_epi32(src, _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(hi, a), _mm256_set1_epi16(16)),
                                                  _mm256_madd_epi16(_mm256_maddubs_epi16(lo, a), ones)));
  } else {
    return _mm256_add_epi32(src, _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), ones));
  }
#endif
}

template <int DOT, int NB, bool RES>
static inline __attribute__((always_inline)) void codes_acc(const __m256i w, const int8_t* a, int64_t K, int64_t res,
                                                            const float* sd, int64_t nblk, Acc* acc) {
#pragma GCC unroll 8
  for (int n = 0; n < NB; ++n) {
    __m256i dot = dot_add<DOT>(_mm256_setzero_si256(), w, _mm256_loadu_si256((const __m256i*)(a + n * K)));
    if (RES) dot = dot_add<DOT>(_mm256_slli_epi32(dot, 8), w, _mm256_loadu_si256((const __m256i*)(a + res + n * K)));
    acc[n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_broadcast_ss(sd + n * nblk), acc[n]);
  }
}

template <int BITS, int NB, bool RES>
static inline __attribute__((always_inline)) void block_acc(const uint8_t* p, const int8_t* a, int64_t K, int64_t res,
                                                            const float* sd, int64_t nblk, Acc* acc) {
  codes_acc<BITS, NB, RES>(load_codes<BITS>(p), a, K, res, sd, nblk, acc);
}

#endif

// ---- activations -> int8 blocks ----------------------------------------------------------------
#if defined(ISA_PORTABLE)
static void quantize_acts(Acts& A, const float* x, int64_t N, int64_t K, bool need8, bool need4, bool need2, bool residual) {
  quantize_acts_scalar(A, x, N, K, need8, need4, need2, residual);
}
#else
#if defined(ISA_AVX2)
// AVX2's four-row loop (rows4_g32) reads P blocks of one row per 32-byte load: pairs of 4-bit blocks,
// quads of 2-bit ones. Their activations are copied into the matching order: the P blocks' s-th
// fields (4-bit: 16 bytes, evens then odds; 2-bit: 8 bytes, the codes at bit 2 s) side by side in the
// s-th 32 bytes. Blocks after a row's last whole pair or quad stay in order. Only the batch row that
// the one-row pass reads is copied (tiles: passes of 8, 4, 2, 1 rows; the last row when N is odd),
// at each of the `levels` activation levels.
template <int P>
static void interleave_blocks(const std::vector<int8_t>& from, std::vector<int8_t>& to, int64_t N, int64_t K,
                              int64_t levels) {
  constexpr int64_t field = 32 / P;
  to.resize(from.size());
  if (N % 2 == 0) return;
  const int64_t B = K / 32, whole = B - B % P;
  for (int64_t l = 0; l < levels; ++l) {
    const int8_t* f = from.data() + (l * N + N - 1) * K;
    int8_t* t = to.data() + (l * N + N - 1) * K;
    for (int64_t b = 0; b < whole; b += P)
      for (int s = 0; s < P; ++s)
        for (int q = 0; q < P; ++q) std::memcpy(t + b * 32 + s * 32 + q * field, f + (b + q) * 32 + s * field, field);
    std::memcpy(t + whole * 32, f + whole * 32, (B - whole) * 32);
  }
}
#endif

// The scalar quantizer's codes, a block of 32 per step: the same d, 1/d and round-to-nearest-even
// (only the block's float sum is added in another order). The scalar loop calls nearbyint per
// element and costs about as much as the product of a short row.
static void quantize_acts(Acts& A, const float* x, int64_t N, int64_t K, bool need8, bool need4, bool need2, bool residual) {
  size_acts(A, N, K, need8, need4, need2, residual);
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 top = _mm256_set1_ps(127.f), bottom = _mm256_set1_ps(-127.f);
  const __m256i natural = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undoes the packs' lane interleave
  // 4-bit order (evens, then odds) and 2-bit order (position 8 s + j: element 4 j + s), per 128-bit lane
  const __m256i even_odd = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                            0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  const __m256i by_field = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                            0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const int64_t levels = residual ? 2 : 1;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t b = 0; b < A.B; ++b) {
      const float* xb = x + n * K + b * 32;
      __m256 v[4];
      for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(xb + 8 * i);
      const __m256 mx = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], absmask), _mm256_and_ps(v[1], absmask)),
                                      _mm256_max_ps(_mm256_and_ps(v[2], absmask), _mm256_and_ps(v[3], absmask)));
      __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
      m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
      const float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
      const float d = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
      A.d[n * A.B + b] = d;
      A.sum[n * A.B + b] = hsum(_mm256_add_ps(_mm256_add_ps(v[0], v[1]), _mm256_add_ps(v[2], v[3])));
      __m256 qf[4];
      for (int i = 0; i < 4; ++i)
        qf[i] = _mm256_min_ps(top, _mm256_max_ps(bottom, _mm256_round_ps(_mm256_mul_ps(v[i], _mm256_set1_ps(inv)),
                                                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)));
      for (int64_t l = 0; l < levels; ++l) {
        __m256i q32[4];
        if (l == 0) {
          for (int i = 0; i < 4; ++i) q32[i] = _mm256_cvtps_epi32(qf[i]);
        } else {  // the rounding residual in steps of d / 256 (zero for an all-zero block)
          const __m256 step = _mm256_set1_ps(amax > 0.f ? 256.f / d : 0.f), dv = _mm256_set1_ps(d);
          for (int i = 0; i < 4; ++i)
            q32[i] = _mm256_cvtps_epi32(_mm256_min_ps(top, _mm256_max_ps(bottom, _mm256_round_ps(
                _mm256_mul_ps(_mm256_sub_ps(v[i], _mm256_mul_ps(dv, qf[i])), step), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))));
        }
        const __m256i q8 = _mm256_permutevar8x32_epi32(
            _mm256_packs_epi16(_mm256_packs_epi32(q32[0], q32[1]), _mm256_packs_epi32(q32[2], q32[3])), natural);
        const int64_t o = l * N * K + n * K + b * 32;
        if (need8) _mm256_storeu_si256((__m256i*)(A.a8.data() + o), q8);
        if (need4)
          _mm256_storeu_si256((__m256i*)(A.a4.data() + o),
                              _mm256_permute4x64_epi64(_mm256_shuffle_epi8(q8, even_odd), _MM_SHUFFLE(3, 1, 2, 0)));
        if (need2)
          _mm256_storeu_si256((__m256i*)(A.a2.data() + o),
                              _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(q8, by_field), natural));
      }
    }
  }
#if defined(ISA_AVX2)
  if (need4) interleave_blocks<2>(A.a4, A.q4, N, K, levels);
  if (need2) interleave_blocks<4>(A.a2, A.q2, N, K, levels);
#endif
}
#endif

#if defined(ISA_AVX2)
// batch row n0's activations for rows4_g32 at BITS bits: the wide order (2, 4) or the natural one (8)
template <int BITS>
static inline const int8_t* wide_acts(const Acts& A, int64_t n0, const int8_t* natural) {
  if constexpr (BITS == 4) return A.q4.data() + n0 * A.K;
  else if constexpr (BITS == 2) return A.q2.data() + n0 * A.K;
  else return natural;
}
#endif

// ---- one code stream of one row ---------------------------------------------------------------
// `count` blocks read in stream order from p; block i of the stream is block blocks[i] of the row.
// U independent accumulators per batch row (U * NB >= 4) hide the FMA latency at small batches.
template <int BITS, int NB, bool RES>
static inline __attribute__((always_inline)) void stream_dot(const uint8_t* __restrict p, const int32_t* __restrict blocks, int64_t count,
                              const int8_t* __restrict acts, int64_t K, int64_t res, const float* __restrict sd,
                              int64_t nblk, Acc* out) {
  constexpr int U = NB >= 4 ? 1 : 4 / NB;
  constexpr int64_t bytes = 32 * BITS / 8;
  Acc acc[U][NB];
  for (int u = 0; u < U; ++u) for (int n = 0; n < NB; ++n) acc_zero(acc[u][n]);
  int64_t i = 0;
  for (; i + U <= count; i += U) {
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) {  // unrolled: the accumulators stay in registers
      const int64_t b = blocks[i + u];
      block_acc<BITS, NB, RES>(p + (i + u) * bytes, acts + b * 32, K, res, sd + b, nblk, acc[u]);
    }
  }
  for (; i < count; ++i) {
    const int64_t b = blocks[i];
    block_acc<BITS, NB, RES>(p + i * bytes, acts + b * 32, K, res, sd + b, nblk, acc[0]);
  }
  for (int n = 0; n < NB; ++n) {
    out[n] = acc[0][n];
    for (int u = 1; u < U; ++u) {
#if defined(ISA_PORTABLE)
      out[n] += acc[u][n];
#else
      out[n] = _mm256_add_ps(out[n], acc[u][n]);
#endif
    }
  }
}

#if defined(ISA_PORTABLE)
#define HALF(h) half_to_float(h)
constexpr bool PORTABLE = true;
#else
#define HALF(h) _cvtsh_ss(h)  // F16C
constexpr bool PORTABLE = false;
#endif


static inline float scale_at(const Meta& M, int64_t row, int64_t j) {
  const int64_t i = row * M.G + j;
  return M.scale_kind == 0 ? ((float)M.scale_u8[i] + 1.f) * M.scale_base[row] : HALF(M.scale_f16[i]);
}
static inline float min_at(const Meta& M, int64_t row, int64_t j) {
  const int64_t i = row * M.G + j;
  return M.min_kind == 0 ? M.min_base[2 * row] + (float)M.min_u8[i] * M.min_base[2 * row + 1] : HALF(M.min_f16[i]);
}

// The row's scales and minimums in float, 8 groups per step where the ISA has vectors.
static inline void row_meta(const Meta& M, int64_t row, float* __restrict s, float* __restrict m) {
  const int64_t G = M.G, o = row * M.G;
  int64_t j = 0;
#if !defined(ISA_PORTABLE)
  const __m256 one = _mm256_set1_ps(1.f);
  for (; j + 8 <= G; j += 8) {
    __m256 sv, mv;
    if (M.scale_kind == 0) {
      const __m256 c = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(M.scale_u8 + o + j))));
      sv = _mm256_mul_ps(_mm256_add_ps(c, one), _mm256_set1_ps(M.scale_base[row]));
    } else {
      sv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(M.scale_f16 + o + j)));
    }
    if (M.min_kind == 0) {
      const __m256 c = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(M.min_u8 + o + j))));
      mv = _mm256_fmadd_ps(c, _mm256_set1_ps(M.min_base[2 * row + 1]), _mm256_set1_ps(M.min_base[2 * row]));
    } else {
      mv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(M.min_f16 + o + j)));
    }
    _mm256_storeu_ps(s + j, sv);
    _mm256_storeu_ps(m + j, mv);
  }
#endif
  for (; j < G; ++j) { s[j] = scale_at(M, row, j); m[j] = min_at(M, row, j); }
}
#undef HALF

// The row's stream order: which of its blocks are in the low stream and which in the high one.
static inline void row_blocks(const uint8_t* tmap, int64_t map_bytes, int64_t r, int64_t G, int64_t sub,
                              int32_t* lo, int32_t* hi, int64_t& nlo, int64_t& nhi) {
  nlo = 0; nhi = 0;
  for (int64_t c0 = 0; c0 < G; c0 += 56) {
    const int nb = (int)std::min<int64_t>(56, G - c0);
    const uint64_t high = map_bits(tmap, map_bytes, r * G + c0, nb);
#if defined(ISA_VNNI512)
    if (sub == 1) {  // 16 groups per step: vpcompressd of the column numbers under the map's bits
      const __m512i step = _mm512_set1_epi32(16);
      __m512i cols = _mm512_add_epi32(_mm512_set1_epi32((int)c0), _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9,
                                                                                     10, 11, 12, 13, 14, 15));
      for (int j = 0; j < nb; j += 16) {
        const __mmask16 valid = (__mmask16)(nb - j >= 16 ? 0xffff : ((1u << (nb - j)) - 1));
        const __mmask16 h = (__mmask16)(high >> j) & valid, l = (__mmask16)(~h) & valid;
        _mm512_mask_compressstoreu_epi32(hi + nhi, h, cols);
        _mm512_mask_compressstoreu_epi32(lo + nlo, l, cols);
        nhi += __builtin_popcount(h); nlo += __builtin_popcount(l);
        cols = _mm512_add_epi32(cols, step);
      }
      continue;
    }
#elif !defined(ISA_PORTABLE)
    if (sub == 1) {  // 8 groups per step: the columns of the chunk's set bits from a table, widened
      for (int j = 0; j < nb; j += 8) {
        const unsigned valid = nb - j >= 8 ? 0xffu : ((1u << (nb - j)) - 1);
        const unsigned h = (unsigned)(high >> j) & valid, l = ~h & valid;
        const __m256i base = _mm256_set1_epi32((int)(c0 + j));
        _mm256_storeu_si256((__m256i*)(hi + nhi), _mm256_add_epi32(base, _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)SET_BITS.pos[h]))));
        _mm256_storeu_si256((__m256i*)(lo + nlo), _mm256_add_epi32(base, _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)SET_BITS.pos[l]))));
        nhi += __builtin_popcount(h); nlo += __builtin_popcount(l);
      }
      continue;
    }
#endif
    for (int j = 0; j < nb; ++j) {
      const int h = (int)((high >> j) & 1);
      for (int64_t k = 0; k < sub; ++k) {
        const int32_t b = (int32_t)((c0 + j) * sub + k);
        lo[nlo] = b; hi[nhi] = b;
        nlo += 1 - h; nhi += h;
      }
    }
  }
}

// Per batch row n: sd[n][b] = s(group of b) * dsc_n[b], and the minimum's term sum_c m_c * gsum_n[c].
#if defined(ISA_PORTABLE)
typedef float MinAcc;
#else
typedef __m256 MinAcc;
#endif
template <int NB>
static inline void row_scales(const float* __restrict s, const float* __restrict m, const float* __restrict dsc,
                              const float* __restrict gsum, int64_t nblk, int64_t G, int64_t sub,
                              float* __restrict sd, MinAcc* macc, float* mtail) {
  for (int n = 0; n < NB; ++n) {
    const float* dn = dsc + n * nblk; const float* gn = gsum + n * G; float* sdn = sd + n * nblk;
    int64_t b = 0, c = 0;
    float tail = 0.f;
#if defined(ISA_PORTABLE)
    macc[n] = 0.f;
#else
    __m256 acc = _mm256_setzero_ps();
    if (sub == 1) {
      for (; b + 8 <= nblk; b += 8) _mm256_storeu_ps(sdn + b, _mm256_mul_ps(_mm256_loadu_ps(s + b), _mm256_loadu_ps(dn + b)));
    }
    for (; c + 8 <= G; c += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(m + c), _mm256_loadu_ps(gn + c), acc);
    macc[n] = acc;
#endif
    for (; b < nblk; ++b) sdn[b] = s[b / sub] * dn[b];
    for (; c < G; ++c) tail += m[c] * gn[c];
    mtail[n] = tail;
  }
}

#if defined(ISA_VNNI512)
// Groups of 32 on AVX-512: the row's metadata, per-block scales and minimum term in one pass of 8
// groups per step, the last step under a load mask (no scalar tail).
template <int NB>
static inline __attribute__((always_inline)) void row_setup_masked(const Meta& M, int64_t row, const float* __restrict dsc,
                                    const float* __restrict gsum, int64_t G, float* __restrict sd, MinAcc* macc) {
  const int64_t o = row * G;
  const __m256 one = _mm256_set1_ps(1.f);
  const __m256 sbase = M.scale_kind == 0 ? _mm256_set1_ps(M.scale_base[row]) : one;
  const __m256 moff = M.min_kind == 0 ? _mm256_set1_ps(M.min_base[2 * row]) : one;
  const __m256 mstep = M.min_kind == 0 ? _mm256_set1_ps(M.min_base[2 * row + 1]) : one;
  for (int n = 0; n < NB; ++n) macc[n] = _mm256_setzero_ps();
  for (int64_t j = 0; j < G; j += 8) {
    const __mmask8 k = (__mmask8)(G - j >= 8 ? 0xff : ((1u << (G - j)) - 1));
    __m256 sv, mv;
    if (M.scale_kind == 0)
      sv = _mm256_mul_ps(_mm256_add_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, M.scale_u8 + o + j))), one), sbase);
    else
      sv = _mm256_cvtph_ps(_mm_maskz_loadu_epi16(k, M.scale_f16 + o + j));
    if (M.min_kind == 0)
      mv = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, M.min_u8 + o + j))), mstep, moff);
    else
      mv = _mm256_cvtph_ps(_mm_maskz_loadu_epi16(k, M.min_f16 + o + j));
    for (int n = 0; n < NB; ++n) {
      _mm256_mask_storeu_ps(sd + n * G + j, k, _mm256_mul_ps(sv, _mm256_maskz_loadu_ps(k, dsc + n * G + j)));
      macc[n] = _mm256_fmadd_ps(mv, _mm256_maskz_loadu_ps(k, gsum + n * G + j), macc[n]);
    }
  }
}
#endif


#if defined(ISA_AVX2)
// ---- rows of 32-code groups on AVX2 -----------------------------------------------------------
// The row's metadata is read 8 groups at a time inside the block loop (scales times the activation
// blocks' d, and the minimum's term), so a short row (K = 576: 18 blocks) makes no separate passes
// over its metadata and keeps no per-block list. Acts' d and group sums carry 8 floats of padding;
// a last, partial chunk's minimums are masked.
static inline __attribute__((always_inline)) void meta8(const Meta& M, int64_t row, int64_t c0, int nb, __m256& sv, __m256& mv) {
  const int64_t o = row * M.G + c0;
  // a partial last chunk reads the 8 groups that end where the row does (G >= 8), then moves them down
  const int64_t at = nb == 8 || c0 < 8 ? o : o + nb - 8;
  const __m256 one = _mm256_set1_ps(1.f);
  // 8 entries of one metadata array (kind 0: u8 codes, 1: fp16) from `at`; a row of fewer than 8
  // groups is copied, so nothing past the matrix is read
  auto raw8 = [&](int kind, const uint8_t* u8, const uint16_t* f16) __attribute__((always_inline)) {
    const uint8_t* from = kind == 0 ? u8 + at : (const uint8_t*)(f16 + at);
    if (nb == 8 || c0 >= 8) return kind == 0 ? _mm_loadl_epi64((const __m128i*)from) : _mm_loadu_si128((const __m128i*)from);
    alignas(16) uint8_t copy[16] = {0};
    std::memcpy(copy, from, nb * (kind == 0 ? 1 : 2));
    return _mm_load_si128((const __m128i*)copy);
  };
  const __m128i sraw = raw8(M.scale_kind, M.scale_u8, M.scale_f16), mraw = raw8(M.min_kind, M.min_u8, M.min_f16);
  sv = M.scale_kind == 0
           ? _mm256_mul_ps(_mm256_add_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sraw)), one), _mm256_set1_ps(M.scale_base[row]))
           : _mm256_cvtph_ps(sraw);
  mv = M.min_kind == 0 ? _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(mraw)), _mm256_set1_ps(M.min_base[2 * row + 1]),
                                         _mm256_set1_ps(M.min_base[2 * row]))
                       : _mm256_cvtph_ps(mraw);
  if (nb < 8) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    if (c0 >= 8) {
      const __m256i from = _mm256_add_epi32(lane, _mm256_set1_epi32(8 - nb));
      sv = _mm256_permutevar8x32_ps(sv, from); mv = _mm256_permutevar8x32_ps(mv, from);
    }
    mv = _mm256_and_ps(mv, _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(nb), lane)));
  }
}

// One row of one code stream (`codes`: the row's blocks of BITS-bit codes) times NB batch rows:
// out[n] = sum over groups (codes . acts) * s * d + m * group sum.
template <int BITS, int NB, bool RES>
static inline __attribute__((always_inline)) void row_g32(const Meta& M, int64_t row, int64_t G, const float* __restrict dsc,
                                                          const float* __restrict gsum, int64_t nblk, int64_t K, int64_t res,
                                                          const uint8_t* codes, const int8_t* acts, float* out) {
  constexpr int64_t bytes = 32 * BITS / 8;
  constexpr int U = NB >= 4 ? 1 : 4 / NB;  // independent accumulators per batch row hide the FMA latency
  Acc acc[U][NB];
  MinAcc macc[NB];
  for (int n = 0; n < NB; ++n) { macc[n] = _mm256_setzero_ps(); for (int u = 0; u < U; ++u) acc_zero(acc[u][n]); }
  alignas(32) float sd[NB][8];
  for (int64_t c0 = 0; c0 < G; c0 += 8) {
    const int nb = (int)std::min<int64_t>(8, G - c0);
    __m256 sv, mv;
    meta8(M, row, c0, nb, sv, mv);
    for (int n = 0; n < NB; ++n) {
      _mm256_store_ps(sd[n], _mm256_mul_ps(sv, _mm256_loadu_ps(dsc + n * nblk + c0)));
      macc[n] = _mm256_fmadd_ps(mv, _mm256_loadu_ps(gsum + n * G + c0), macc[n]);
    }
    int j = 0;
    for (; j + U <= nb; j += U)
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u) {  // unrolled: the accumulators stay in registers
        const int64_t c = c0 + j + u;
        block_acc<BITS, NB, RES>(codes + c * bytes, acts + c * 32, K, res, &sd[0][j + u], 8, acc[u]);
      }
    for (; j < nb; ++j) {
      const int64_t c = c0 + j;
      block_acc<BITS, NB, RES>(codes + c * bytes, acts + c * 32, K, res, &sd[0][j], 8, acc[0]);
    }
  }
  for (int n = 0; n < NB; ++n) {
    __m256 v = macc[n];
    for (int u = 0; u < U; ++u) v = _mm256_add_ps(v, acc[u][n]);
    out[n] = hsum(v);
  }
}

// Four rows of one code stream times one activation row (decode's matvec): the rows share the loop
// and the activation loads, and their sums are reduced together. A short row (K = 576: 18 blocks)
// otherwise spends about as long on its setup and reduction as on its blocks.
// 2-bit and 4-bit codes are read P blocks per 32-byte load (quads, pairs): field s of the load (a
// shift and a mask) meets the s-th 32 activation bytes of the wide order (interleave_blocks), the P
// products add in int16 (at most 4 x 2 x 3 x 127 or 2 x 2 x 15 x 127: no saturation), and one
// vpmaddwd, one conversion and one FMA against the blocks' scales spread over their lanes finish
// them. Four 2-bit blocks take 5 multiplies and 1 conversion (8 and 4 a block at a time), two 4-bit
// blocks 3 and 1 (4 and 2), and no 128-bit insert: the 1-thread head product took 13% (2-bit) and
// 23% (4-bit) less time.
// `codes`: the first row's blocks of BITS-bit codes, the next rows `row_bytes` apart; `acts`: the
// activation row (2-bit and 4-bit: in the wide order, Acts::q2 / q4). KEEP_SD: the
// rows' per-group scales times the blocks' d are kept in `sd_out`, `sd_stride` floats per row (G
// rounded up to 8: a partial last chunk is stored whole).
template <int BITS, bool RES, bool KEEP_SD = false>
static inline __attribute__((always_inline)) void rows4_g32(const Meta& M, int64_t row0, int64_t G, const float* __restrict dsc,
                                                            const float* __restrict gsum, int64_t K, int64_t res,
                                                            const uint8_t* codes, int64_t row_bytes, const int8_t* acts,
                                                            float* out, float* sd_out = nullptr, int64_t sd_stride = 0) {
  constexpr int64_t bytes = 32 * BITS / 8;
  constexpr int P = BITS == 2 ? 4 : BITS == 4 ? 2 : 1;  // blocks per 32-byte load
  Acc acc[4];
  MinAcc macc[4];
  for (int i = 0; i < 4; ++i) { acc_zero(acc[i]); macc[i] = _mm256_setzero_ps(); }
  alignas(32) float sd[4][8];
  __m256 sdv[4];
  const __m256i ones = _mm256_set1_epi16(1), field_mask = _mm256_set1_epi8((char)((1 << BITS) - 1));
  // int32 lane -> block of the load: 8 / P lanes per block
  const __m256i lane_block = P == 4 ? _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3) : _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
  for (int64_t c0 = 0; c0 < G; c0 += 8) {
    const int nb = (int)std::min<int64_t>(8, G - c0);
    const __m256 d = _mm256_loadu_ps(dsc + c0), gs = _mm256_loadu_ps(gsum + c0);
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      __m256 sv, mv;
      meta8(M, row0 + i, c0, nb, sv, mv);
      sdv[i] = _mm256_mul_ps(sv, d);
      _mm256_store_ps(sd[i], sdv[i]);
      macc[i] = _mm256_fmadd_ps(mv, gs, macc[i]);
      if constexpr (KEEP_SD) _mm256_storeu_ps(sd_out + i * sd_stride + c0, sdv[i]);
    }
    int j = 0;
    if constexpr (P > 1) {
      for (; j + P <= nb; j += P) {
        const int8_t* a = acts + (c0 + j) * 32;
        __m256i av[P], rv[P];
#pragma GCC unroll 4
        for (int f = 0; f < P; ++f) {
          av[f] = _mm256_loadu_si256((const __m256i*)(a + 32 * f));
          if (RES) rv[f] = _mm256_loadu_si256((const __m256i*)(a + res + 32 * f));
        }
        const __m256i lanes = _mm256_add_epi32(lane_block, _mm256_set1_epi32(j));
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) {
          const __m256i v = _mm256_loadu_si256((const __m256i*)(codes + i * row_bytes + (c0 + j) * bytes));
          __m256i sum16 = _mm256_setzero_si256(), res16 = _mm256_setzero_si256();
#pragma GCC unroll 4
          for (int f = 0; f < P; ++f) {
            const __m256i w = _mm256_and_si256(f ? _mm256_srli_epi16(v, f * BITS) : v, field_mask);
            sum16 = _mm256_add_epi16(sum16, _mm256_maddubs_epi16(w, av[f]));
            if (RES) res16 = _mm256_add_epi16(res16, _mm256_maddubs_epi16(w, rv[f]));
          }
          __m256i dot = _mm256_madd_epi16(sum16, ones);
          if (RES) dot = _mm256_add_epi32(_mm256_slli_epi32(dot, 8), _mm256_madd_epi16(res16, ones));
          acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_permutevar8x32_ps(sdv[i], lanes), acc[i]);
        }
      }
    }
    for (; j < nb; ++j) {
      const int8_t* a = acts + (c0 + j) * 32;
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) block_acc<BITS, 1, RES>(codes + i * row_bytes + (c0 + j) * bytes, a, K, res, &sd[i][j], 8, &acc[i]);
    }
  }
  // hadd(hadd(v0, v1), hadd(v2, v3)) holds each row's two half sums; adding the halves gives all four
  __m256 v[4];
  for (int i = 0; i < 4; ++i) v[i] = _mm256_add_ps(acc[i], macc[i]);
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
}

// The set bits among the first `rows` rows of a tile's map (row-major, G groups per row), 8 per step
// from a table, into list[0..n): positions p; list[cap..): the offset of the sum each goes to,
// 8 (p / G + (e % SPLIT_WAYS) rows) for the e-th (see split_corrections); list[2 cap..): columns
// c = p % G; list[3 cap..): (p / G) sd_stride + c, where rows4_g32 kept its scale. Returns n.
// Float division is exact here: p < 2^21 and (p + 0.5) / G stays 0.5 / G from integers.
constexpr int SPLIT_WAYS = 4;
// map byte k of a tile's first `bits` map bits, the bits past them cleared
static inline unsigned map_byte(const uint8_t* tmap, int64_t k, int64_t bits) {
  unsigned byte = tmap[k];
  if (8 * k + 8 > bits) byte &= (1u << (bits - 8 * k)) - 1;
  return byte;
}
static inline int64_t high_positions(const uint8_t* tmap, int64_t rows, int64_t G, int64_t sd_stride, int32_t* list,
                                     int64_t cap) {
  const int64_t bits = rows * G;
  int64_t n = 0;
  const __m256 inv_g = _mm256_set1_ps(1.f / (float)G), half = _mm256_set1_ps(0.5f);
  const __m256i g = _mm256_set1_epi32((int)G), lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t k = 0; 8 * k < bits; ++k) {
    const unsigned byte = map_byte(tmap, k, bits);
    const __m256i p = _mm256_add_epi32(_mm256_set1_epi32((int)(8 * k)),
                                       _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)SET_BITS.pos[byte])));
    const __m256i row = _mm256_cvttps_epi32(_mm256_mul_ps(_mm256_add_ps(_mm256_cvtepi32_ps(p), half), inv_g));
    const __m256i way = _mm256_and_si256(_mm256_add_epi32(_mm256_set1_epi32((int)n), lane), _mm256_set1_epi32(SPLIT_WAYS - 1));
    _mm256_storeu_si256((__m256i*)(list + n), p);
    _mm256_storeu_si256((__m256i*)(list + cap + n),
                        _mm256_slli_epi32(_mm256_add_epi32(row, _mm256_mullo_epi32(way, _mm256_set1_epi32((int)rows))), 3));
    const __m256i col = _mm256_sub_epi32(p, _mm256_mullo_epi32(row, g));
    _mm256_storeu_si256((__m256i*)(list + 2 * cap + n), col);
    _mm256_storeu_si256((__m256i*)(list + 3 * cap + n), _mm256_add_epi32(_mm256_mullo_epi32(row, _mm256_set1_epi32((int)sd_stride)), col));
    n += __builtin_popcount(byte);
  }
  return n;
}

// The split layout's high groups of a tile's first `rows` rows (groups of 32, batch 1), added to those
// rows' outputs y[i] after rows4_g32 has read the dense stream as if every group were low-bit (scale s,
// codes h). A high group's codes are 4 h + l, so what that pass left out is s (3 h + l): h from the
// dense stream (block p of the tile, still in cache), l from the second stream, 3 h + l <= 12
// (vpmaddubsw cannot saturate). One flat pass over the tile's `n` high groups (`list`), a count the
// same in every tile, so its loop exit is predicted, unlike a set-bit loop per row; the dense pass
// needs no map.
template <bool RES>
static inline void split_corrections(const uint8_t* __restrict dense, const uint8_t* __restrict corr,
                                     const int32_t* __restrict list, int64_t cap, int64_t n, int64_t rows,
                                     const float* __restrict sd, const int8_t* __restrict acts, int64_t K, int64_t res,
                                     float* __restrict cacc, float* y) {
  // SPLIT_WAYS sums per row, consecutive groups taking turns: a row's groups follow each other, and
  // one sum in memory would chain every group's load, FMA and store on the one before
  for (int64_t i = 0; i < SPLIT_WAYS * rows; ++i) _mm256_storeu_ps(cacc + 8 * i, _mm256_setzero_ps());
  const int32_t *to = list + cap, *col = list + 2 * cap, *at = list + 3 * cap;
  for (int64_t e = 0; e < n; ++e) {
    const int64_t p = list[e];
    const __m256i h = expand_codes<2>(dense + 8 * p);
    const __m256i w = _mm256_add_epi8(_mm256_add_epi8(h, _mm256_add_epi8(h, h)), expand_codes<2>(corr + 8 * e));
    float* sum = cacc + to[e];
    Acc a = _mm256_loadu_ps(sum);
    codes_acc<2, 1, RES>(w, acts + 32 * (int64_t)col[e], K, res, sd + at[e], 8, &a);
    _mm256_storeu_ps(sum, a);
  }
  for (int64_t i = 0; i < rows; ++i) {
    __m256 v = _mm256_loadu_ps(cacc + 8 * i);
    for (int w = 1; w < SPLIT_WAYS; ++w) v = _mm256_add_ps(v, _mm256_loadu_ps(cacc + 8 * (i + w * rows)));
    y[i] += hsum(v);
  }
}

#endif

// NB batch rows of every row of tile t.
#if defined(ISA_AVX2)
// The same for rows of more than SPLIT_LIST_MAX_GROUPS groups, row by row: a set-bit loop over each
// row's map bits, the row's sum in a register. Its exit mispredicts once per row, which a long row
// spreads over its many high groups, where the tile list costs a fixed amount per map byte.
constexpr int64_t SPLIT_LIST_MAX_GROUPS = 32;
template <bool RES>
static inline void split_corrections_by_row(const uint8_t* __restrict dense, const uint8_t* __restrict corr,
                                            const uint8_t* tmap, int64_t map_bytes, int64_t rows, int64_t G,
                                            const float* __restrict sd, int64_t sd_stride,
                                            const int8_t* __restrict acts, int64_t K, int64_t res, float* y) {
  for (int64_t i = 0; i < rows; ++i) {
    Acc a;
    acc_zero(a);
    for (int64_t c0 = 0; c0 < G; c0 += 56) {
      for (uint64_t high = map_bits(tmap, map_bytes, i * G + c0, (int)std::min<int64_t>(56, G - c0)); high;
           high &= high - 1) {
        const int64_t c = c0 + __builtin_ctzll(high);
        const __m256i h = expand_codes<2>(dense + 8 * (i * G + c));
        const __m256i w = _mm256_add_epi8(_mm256_add_epi8(h, _mm256_add_epi8(h, h)), expand_codes<2>(corr));
        codes_acc<2, 1, RES>(w, acts + 32 * c, K, res, sd + i * sd_stride + c, 8, &a);
        corr += 8;
      }
    }
    y[i] += hsum(a);
  }
}
#endif

template <int LO, int HI, int NB, bool RES, bool SPLIT>
static void tile_rows(const uint8_t* lo, int64_t lo_bytes, const uint8_t* hi, int64_t hi_bytes, const uint8_t* tmap,
                      int64_t map_bytes, int all_high,
                      int64_t t, int64_t R, int64_t G, int64_t g, const Meta& M, const Acts& A, int64_t n0,
                      const int8_t* acts_lo, const int8_t* acts_hi, int64_t out, float* y, Scratch& S) {
  const int64_t K = A.K, nblk = A.B, sub = g / 32;
  const float* dsc = A.dsc.data() + n0 * nblk;
  const float* gsum = A.gsum.data() + n0 * G;
  const int8_t* alo = acts_lo + n0 * K;
  const int8_t* ahi = acts_hi + n0 * K;
  float* s = S.s.data(); float* m = S.m.data(); float* sd = S.sd.data();
  const int64_t lo_row = lo_bytes / R, hi_row = hi_bytes / R;  // a row's share of each stream (bytes)
  const int64_t scale_bytes = (M.scale_kind == 0 ? 1 : 2) * G, min_bytes = (M.min_kind == 0 ? 1 : 2) * G;
#if defined(ISA_AVX2)
  // the split layout at batch 1: rows four at a time over the dense stream, then their high groups
  const int64_t quad_rows = SPLIT && NB == 1 && sub == 1 ? R - R % 4 : 0, sd_stride = (G + 7) / 8 * 8;
  const uint8_t *quad_dense = lo, *quad_corr = hi;
  int64_t quad_high = 0;
  if (quad_rows) {
    if ((int64_t)S.tile_scale.size() < quad_rows * sd_stride) S.tile_scale.resize(quad_rows * sd_stride);
    if (G <= SPLIT_LIST_MAX_GROUPS) {
      if ((int64_t)S.tile_high.size() < 4 * (quad_rows * G + 8)) S.tile_high.resize(4 * (quad_rows * G + 8));
      if ((int64_t)S.tile_acc.size() < quad_rows * 8 * SPLIT_WAYS) S.tile_acc.resize(quad_rows * 8 * SPLIT_WAYS);
      quad_high = high_positions(tmap, quad_rows, G, sd_stride, S.tile_high.data(), quad_rows * G + 8);
    } else {  // only the count: the rows are walked one by one after the dense pass
      for (int64_t k = 0; 8 * k < quad_rows * G; ++k) quad_high += __builtin_popcount(map_byte(tmap, k, quad_rows * G));
    }
    hi += 8 * quad_high;  // the rows after them read their own
    // this tile's and the next tile's second stream, read after the dense pass: the row loop's
    // prefetches follow a stream that advances per row, this one does not (without these, each of its
    // cache lines was a miss: as long as the whole dense pass of 576x1536)
    for (int64_t o = 0; o < 2 * hi_bytes; o += 64) _mm_prefetch((const char*)(quad_corr + o), _MM_HINT_T0);
  }
#endif
  for (int64_t r = 0; r < R; ++r) {
    const int64_t row = t * R + r;
#if defined(ISA_AVX2)
    const bool quad = NB == 1 && sub == 1 && (SPLIT ? r + 4 <= quad_rows : !tmap && r + 4 <= R);  // see rows4_g32
    const int64_t rows_now = quad ? 4 : 1;
#else
    const int64_t rows_now = 1;
#endif
#if !defined(ISA_PORTABLE)
    // Cache-cold weights: fetch codes and metadata about 4 KiB ahead (at least 4 rows); prefetches past
    // the end are dropped. Four rows ahead was too close for short rows (the 49152x576 head at one
    // thread read measurably slower).
    const int64_t AHEAD = std::max<int64_t>(4, 4096 / (lo_row + hi_row + scale_bytes + min_bytes));
    for (int64_t o = 0; o < rows_now * lo_row; o += 64) _mm_prefetch((const char*)(lo + AHEAD * lo_row + o), _MM_HINT_T0);
    for (int64_t o = 0; o < rows_now * hi_row; o += 64) _mm_prefetch((const char*)(hi + AHEAD * hi_row + o), _MM_HINT_T0);
    {
      const uint8_t* sc = M.scale_kind == 0 ? M.scale_u8 : (const uint8_t*)M.scale_f16;
      const uint8_t* mn = M.min_kind == 0 ? M.min_u8 : (const uint8_t*)M.min_f16;
      for (int64_t o = 0; o < rows_now * scale_bytes; o += 64) _mm_prefetch((const char*)(sc + (row + AHEAD) * scale_bytes + o), _MM_HINT_T0);
      for (int64_t o = 0; o < rows_now * min_bytes; o += 64) _mm_prefetch((const char*)(mn + (row + AHEAD) * min_bytes + o), _MM_HINT_T0);
    }
#endif
#if defined(ISA_AVX2)
    if constexpr (SPLIT) {
      if (quad) {
        const int64_t row_bytes = nblk * 8;
        rows4_g32<2, RES, true>(M, row, G, dsc, gsum, K, A.res, lo, row_bytes, wide_acts<2>(A, n0, alo), y + n0 * out + row,
                          S.tile_scale.data() + r * sd_stride, sd_stride);
        lo += 4 * row_bytes;
        r += 3;
        continue;
      }
    }
    // rows of one stream (no map): the metadata is read inside the block loop (row_g32, rows4_g32)
    if (sub == 1 && !tmap) {
      const uint8_t*& p = all_high ? hi : lo;
      const int8_t* a0 = all_high ? ahi : alo;
      auto one_stream = [&](auto bits) __attribute__((always_inline)) {
        constexpr int BITS = decltype(bits)::value, bytes = 32 * BITS / 8;
        const int64_t row_bytes = nblk * bytes;
        if (quad) {
          rows4_g32<BITS, RES>(M, row, G, dsc, gsum, K, A.res, p, row_bytes, wide_acts<BITS>(A, n0, a0), y + n0 * out + row);
          p += 4 * row_bytes;
          return;
        }
        float yr[NB];
        row_g32<BITS, NB, RES>(M, row, G, dsc, gsum, nblk, K, A.res, p, a0, yr);
        p += row_bytes;
        for (int n = 0; n < NB; ++n) y[(n0 + n) * out + row] = yr[n];
      };
      if (all_high) one_stream(std::integral_constant<int, HI>{});
      else one_stream(std::integral_constant<int, LO>{});
      r += rows_now - 1;
      continue;
    }
#endif
    const int32_t *blo = S.lo.data(), *bhi = S.hi.data();
    int64_t nlo = 0, nhi = 0;
    if (tmap) row_blocks(tmap, map_bytes, r, G, sub, S.lo.data(), S.hi.data(), nlo, nhi);
    else if (all_high) { bhi = S.identity.data(); nhi = nblk; }
    else { blo = S.identity.data(); nlo = nblk; }
    MinAcc macc[NB];
    float mtail[NB];
#if defined(ISA_VNNI512)
    if (sub == 1) {
      row_setup_masked<NB>(M, row, dsc, gsum, G, sd, macc);
      for (int n = 0; n < NB; ++n) mtail[n] = 0.f;
    } else
#endif
    {
      row_meta(M, row, s, m);
      row_scales<NB>(s, m, dsc, gsum, nblk, G, sub, sd, macc, mtail);
    }
    if constexpr (SPLIT) {  // the dense stream holds every block, a high one's top bits at 4x the scale
      for (int n = 0; n < NB; ++n)
        for (int64_t i = 0; i < nhi; ++i) sd[n * nblk + bhi[i]] *= 4.f;
      blo = S.identity.data(); nlo = nblk;
    }
    Acc acc_lo[NB], acc_hi[NB];
    if (nlo) { stream_dot<LO, NB, RES>(lo, blo, nlo, alo, K, A.res, sd, nblk, acc_lo); lo += nlo * 32 * LO / 8; }
    if (nhi) { stream_dot<HI, NB, RES>(hi, bhi, nhi, ahi, K, A.res, sd, nblk, acc_hi); hi += nhi * 32 * HI / 8; }
    for (int n = 0; n < NB; ++n) {
      MinAcc v = macc[n];
#if defined(ISA_PORTABLE)
      if (nlo) v += acc_lo[n];
      if (nhi) v += (SPLIT ? 0.25f : 1.f) * acc_hi[n];  // SPLIT: the low bits at the plain scale
      y[(n0 + n) * out + row] = v + mtail[n];
#else
      if (nlo) v = acc_scaled<LO>(acc_lo[n], v);
      if (nhi) v = acc_scaled<HI>(SPLIT ? _mm256_mul_ps(acc_hi[n], _mm256_set1_ps(0.25f)) : acc_hi[n], v);
      y[(n0 + n) * out + row] = hsum(v) + mtail[n];
#endif
    }
  }
#if defined(ISA_AVX2)
  if (quad_rows && G <= SPLIT_LIST_MAX_GROUPS)
    split_corrections<RES>(quad_dense, quad_corr, S.tile_high.data(), quad_rows * G + 8, quad_high, quad_rows,
                           S.tile_scale.data(), alo, K, A.res, S.tile_acc.data(), y + n0 * out + t * R);
  else if (quad_rows)
    split_corrections_by_row<RES>(quad_dense, quad_corr, tmap, map_bytes, quad_rows, G, S.tile_scale.data(), sd_stride, alo,
                                  K, A.res, y + n0 * out + t * R);
#endif
}

// The tiles of one product. With S given the caller is inside its own parallel region (the
// whole-model forward) and this thread takes its static share `part` of `parts`; otherwise it opens one.
template <int LO, int HI, bool RES, bool SPLIT = false>
static void tiles(const uint8_t* codes_lo, int64_t stride_lo, const uint8_t* codes_hi, int64_t stride_hi,
                  const uint8_t* map, int64_t map_bytes, int all_high, int64_t T, int64_t R, int64_t G, int64_t g,
                  const Meta& M, const Acts& A, const int8_t* acts_lo, const int8_t* acts_hi, float* y, Scratch* S,
                  int part, int parts) {
  const int64_t out = T * R, N = A.N;
  auto tile = [&](int64_t t, Scratch& scratch) {
    const uint8_t* lo = codes_lo + t * stride_lo;
    const uint8_t* hi = codes_hi + t * stride_hi;
    const uint8_t* tmap = map ? map + t * map_bytes : nullptr;
    const int64_t lo_bytes = stride_lo, hi_bytes = stride_hi;
    // batch rows in passes of 8, 4, 2, 1 (the codes of the tile are re-read per pass, from cache)
    int64_t n0 = 0;
    for (; n0 + 8 <= N; n0 += 8) tile_rows<LO, HI, 8, RES, SPLIT>(lo, lo_bytes, hi, hi_bytes, tmap, map_bytes, all_high, t, R, G, g, M, A, n0, acts_lo, acts_hi, out, y, scratch);
    if (n0 + 4 <= N) { tile_rows<LO, HI, 4, RES, SPLIT>(lo, lo_bytes, hi, hi_bytes, tmap, map_bytes, all_high, t, R, G, g, M, A, n0, acts_lo, acts_hi, out, y, scratch); n0 += 4; }
    if (n0 + 2 <= N) { tile_rows<LO, HI, 2, RES, SPLIT>(lo, lo_bytes, hi, hi_bytes, tmap, map_bytes, all_high, t, R, G, g, M, A, n0, acts_lo, acts_hi, out, y, scratch); n0 += 2; }
    if (n0 < N) tile_rows<LO, HI, 1, RES, SPLIT>(lo, lo_bytes, hi, hi_bytes, tmap, map_bytes, all_high, t, R, G, g, M, A, n0, acts_lo, acts_hi, out, y, scratch);
  };
  if (S) {
    for (int64_t t = T * part / parts; t < T * (part + 1) / parts; ++t) tile(t, *S);
    return;
  }
  const int threads = (int)std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), T));
#pragma omp parallel num_threads(threads)
  {
    Scratch scratch(G, A.B, 8);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; ++t) tile(t, scratch);
  }
}

static void run(int bits_lo, int bits_hi, const uint8_t* cl, int64_t sl, const uint8_t* ch, int64_t sh,
                const uint8_t* map, int64_t mb, int all_high, int split, int64_t T, int64_t R, int64_t G, int64_t g,
                const Meta& M, const Acts& A, const int8_t* alo, const int8_t* ahi, float* y, Scratch* S,
                int part, int parts) {
  if (split) {
    if (A.res) tiles<2, 2, true, true>(cl, sl, ch, sh, map, mb, 0, T, R, G, g, M, A, alo, ahi, y, S, part, parts);
    else tiles<2, 2, false, true>(cl, sl, ch, sh, map, mb, 0, T, R, G, g, M, A, alo, ahi, y, S, part, parts);
    return;
  }
#define CASE(L, H) if (bits_lo == L && bits_hi == H) { \
    if (A.res) tiles<L, H, true>(cl, sl, ch, sh, map, mb, all_high, T, R, G, g, M, A, alo, ahi, y, S, part, parts); \
    else tiles<L, H, false>(cl, sl, ch, sh, map, mb, all_high, T, R, G, g, M, A, alo, ahi, y, S, part, parts); \
    return; }
  CASE(2, 4) CASE(2, 2) CASE(4, 4) CASE(8, 8) CASE(2, 8) CASE(4, 8)
#undef CASE
  TORCH_CHECK(false, "unsupported bits pair ", bits_lo, "/", bits_hi, " (low bits must not exceed high bits)");
}
"""

_FOOTER = r"""
static bool cpu_has(const std::string& path) {
  __builtin_cpu_init();
  if (path == "portable") return true;
  if (path == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (path == "avx_vnni") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("avxvnni");
  if (path == "avx512_vnni")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  return false;
}

bool path_supported(std::string path) { return cpu_has(path); }

static const uint8_t* bytes_of(const torch::Tensor& t) { return t.numel() ? (const uint8_t*)t.data_ptr() : nullptr; }

typedef void (*RunFn)(int, int, const uint8_t*, int64_t, const uint8_t*, int64_t, const uint8_t*, int64_t, int, int, int64_t,
                      int64_t, int64_t, int64_t, const Meta&, const Acts&, const int8_t*, const int8_t*, float*, Scratch*,
                      int, int);

typedef void (*QuantFn)(Acts&, const float*, int64_t, int64_t, bool, bool, bool, bool);

struct Kernel {  // one path's product and activation quantizer
  RunFn run;
  QuantFn quantize;
};

static Kernel kernel_of(const std::string& path) {
  TORCH_CHECK(cpu_has(path), "kernel path ", path, " is not supported by this CPU");
  if (path == "avx512_vnni") return {isa_avx512_vnni::run, isa_avx512_vnni::quantize_acts};
  if (path == "avx_vnni") return {isa_avx_vnni::run, isa_avx_vnni::quantize_acts};
  if (path == "avx2") return {isa_avx2::run, isa_avx2::quantize_acts};
  return {isa_portable::run, isa_portable::quantize_acts};
}

// One matrix's kernel arguments, checked and converted once (the tensors stay owned by the caller).
struct Product {
  int bits_lo, bits_hi, all_high, split, act_levels;
  const uint8_t *cl, *ch, *map;
  int64_t sl, sh, mb, T, R, G, g, in, out;
  Meta M;

  Product(const torch::Tensor& codes_lo, const torch::Tensor& codes_hi, const torch::Tensor& group_map,
          int64_t all_high_, int64_t split_, int64_t R_, int64_t g_, int64_t bits_lo_, int64_t bits_hi_, int64_t scale_kind,
          const torch::Tensor& scale_codes, const torch::Tensor& scale_base, int64_t min_kind,
          const torch::Tensor& min_codes, const torch::Tensor& min_base, int64_t act_levels_) {
    TORCH_CHECK(g_ % 32 == 0 && g_ > 0, "the integer kernel needs groups of a multiple of 32 codes, got ", g_);
    TORCH_CHECK(act_levels_ == 1 || act_levels_ == 2, "act_levels must be 1 (int8) or 2 (int8 + int8 residual)");
    bits_lo = (int)bits_lo_; bits_hi = (int)bits_hi_; all_high = (int)all_high_; split = (int)split_;
    act_levels = (int)act_levels_;
    TORCH_CHECK(!split || (bits_lo == 2 && bits_hi == 2 && group_map.numel()),
                "the split layout is two 2-bit streams and a map of the high groups");
    R = R_; g = g_; T = codes_lo.size(0); out = T * R;
    TORCH_CHECK(scale_codes.dim() == 2 && scale_codes.size(0) == out, "scales must be [", out, ", groups]");
    G = scale_codes.size(1); in = G * g;
    cl = bytes_of(codes_lo); ch = bytes_of(codes_hi);
    sl = codes_lo.numel() ? codes_lo.size(1) * 4 : 0; sh = codes_hi.numel() ? codes_hi.size(1) * 4 : 0;
    mb = group_map.numel() ? group_map.size(1) : 0;
    map = group_map.numel() ? group_map.data_ptr<uint8_t>() : nullptr;
    M.G = G; M.scale_kind = (int)scale_kind; M.min_kind = (int)min_kind;
    M.scale_u8 = scale_kind == 0 ? scale_codes.data_ptr<uint8_t>() : nullptr;
    M.scale_f16 = scale_kind == 1 ? (const uint16_t*)scale_codes.data_ptr() : nullptr;
    M.scale_base = scale_kind == 0 ? scale_base.data_ptr<float>() : nullptr;
    M.min_u8 = min_kind == 0 ? min_codes.data_ptr<uint8_t>() : nullptr;
    M.min_f16 = min_kind == 1 ? (const uint16_t*)min_codes.data_ptr() : nullptr;
    M.min_base = min_kind == 0 ? min_base.data_ptr<float>() : nullptr;
  }

  // whether a stream of this many bits is in the matrix (its codes need the activations in that order)
  bool uses(int bits) const { return bits_lo == bits || bits_hi == bits; }

  // x [N, in] -> A (int8 blocks in the orders this matrix's streams need)
  void quantize(const Kernel& k, Acts& A, const float* x, int64_t N) const {
    k.quantize(A, x, N, in, uses(8), uses(4), uses(2), act_levels == 2);
    group_activations(A, g);
  }

  // y = x W^T for the quantized x in A: all of it (S null: opens its own parallel region), or this
  // thread's share `part` of `parts` of the tiles inside the caller's region.
  void multiply(const Kernel& k, const Acts& A, float* y, Scratch* S = nullptr, int part = 0, int parts = 1) const {
    auto acts_of = [&](int bits) -> const int8_t* { return bits == 8 ? A.a8.data() : bits == 4 ? A.a4.data() : A.a2.data(); };
    k.run(bits_lo, bits_hi, cl, sl, ch, sh, map, mb, all_high, split, T, R, G, g, M, A, acts_of(bits_lo), acts_of(bits_hi), y, S,
        part, parts);
  }
};

torch::Tensor int_matmul(torch::Tensor x, torch::Tensor codes_lo, torch::Tensor codes_hi, torch::Tensor group_map,
                         int64_t all_high, int64_t split, int64_t R, int64_t g, int64_t bits_lo, int64_t bits_hi,
                         int64_t scale_kind, torch::Tensor scale_codes, torch::Tensor scale_base,
                         int64_t min_kind, torch::Tensor min_codes, torch::Tensor min_base, std::string path,
                         int64_t act_levels) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.dim() == 2 && x.is_contiguous(), "x must be contiguous float32 [N, in]");
  const Kernel kernel = kernel_of(path);
  const Product P(codes_lo, codes_hi, group_map, all_high, split, R, g, bits_lo, bits_hi, scale_kind, scale_codes, scale_base,
                  min_kind, min_codes, min_base, act_levels);
  TORCH_CHECK(x.size(1) == P.in, "x has ", x.size(1), " features, the matrix ", P.in, " (groups of ", g, ")");
  auto y = torch::empty({x.size(0), P.out}, x.options());
  Acts A;
  P.quantize(kernel, A, x.data_ptr<float>(), x.size(0));
  P.multiply(kernel, A, y.data_ptr<float>());
  return y;
}

// ---- a whole Llama forward in one call ---------------------------------------------------------
// Per layer: RMSNorm, q|k|v, rotary + cache write, grouped-query attention, o, RMSNorm, gate|up,
// SiLU gate, down; then the final norm and the head. One OpenMP region spans the call: the products
// split their tiles over its threads (an orphaned `omp for`), the small vector steps run on one
// thread or split by (position, head), with a barrier between phases. Python (with its ~12 torch ops
// and 4 kernel calls per layer) then costs nothing per layer, and the GIL is released for the call.
static void rms_norm_rows(const float* x, const float* w, float* out, int64_t T, int64_t H, float eps) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * H;
    float ss = 0.f;
    for (int64_t i = 0; i < H; ++i) ss += xr[i] * xr[i];
    const float r = 1.f / std::sqrt(ss / (float)H + eps);
    for (int64_t i = 0; i < H; ++i) out[t * H + i] = w[i] * (xr[i] * r);
  }
}

static inline void rope(const float* in, float* out, const float* c, const float* s, int64_t half) {
  for (int64_t i = 0; i < half; ++i) {
    out[i] = in[i] * c[i] - in[i + half] * s[i];
    out[i + half] = in[i + half] * c[i + half] + in[i] * s[i + half];
  }
}

// Key/value head kh of one position's q|k|v row into the caches [kv_heads, capacity, head_dim] at
// position p: rotary on k (c, s: position p's rows), v as it is.
static inline void write_kv(const float* row, int64_t nq, int64_t nkv, int64_t kh, int64_t hd, float* K, float* V,
                            int64_t cap, int64_t p, const float* c, const float* s) {
  rope(row + nq + kh * hd, K + (kh * cap + p) * hd, c, s, hd / 2);
  std::copy(row + nq + nkv + kh * hd, row + nq + nkv + (kh + 1) * hd, V + (kh * cap + p) * hd);
}

// One query head over the n cached positions of its kv head: o = softmax(q K^T / sqrt(hd)) V
// (w: n floats of scratch).
static void attend_head(const float* q, const float* Kh, const float* Vh, int64_t n, int64_t hd, float scale, float* w,
                        float* o) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    float dot = 0.f;
    for (int64_t e = 0; e < hd; ++e) dot += q[e] * Kh[j * hd + e];
    w[j] = dot * scale;
    mx = std::max(mx, w[j]);
  }
  float total = 0.f;
  for (int64_t j = 0; j < n; ++j) { w[j] = std::exp(w[j] - mx); total += w[j]; }
  std::fill(o, o + hd, 0.f);
  for (int64_t j = 0; j < n; ++j) {
    const float pj = w[j] / total;
    for (int64_t e = 0; e < hd; ++e) o[e] += pj * Vh[j * hd + e];
  }
}

// One decode position's attention for the torch-path forward (dense matrices: the fp32 copy): rotary
// on q and k, the cache write, grouped-query attention over the cached positions. At T = 1 this
// replaces ~20 small torch ops per layer. qkv [1, q+k+v]; cos/sin: position pos's rows [head_dim];
// kc/vc: one layer's cache [kv_heads, capacity, head_dim].
torch::Tensor attend_one(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, torch::Tensor kc, torch::Tensor vc,
                         int64_t pos, int64_t heads, int64_t kv_heads) {
  const int64_t hd = kc.size(2), half = hd / 2, cap = kc.size(1), nq = heads * hd, nkv = kv_heads * hd;
  TORCH_CHECK(qkv.dtype() == torch::kFloat32 && qkv.is_contiguous() && qkv.numel() == nq + 2 * nkv, "qkv [1, q+k+v]");
  TORCH_CHECK(kc.is_contiguous() && vc.is_contiguous() && kc.size(0) == kv_heads && pos < cap, "cache layout");
  const float* x = qkv.data_ptr<float>();
  const float* c = cos.data_ptr<float>();
  const float* s = sin.data_ptr<float>();
  float* K = kc.data_ptr<float>();
  float* V = vc.data_ptr<float>();
  for (int64_t h = 0; h < kv_heads; ++h) write_kv(x, nq, nkv, h, hd, K, V, cap, pos, c, s);
  auto y = torch::empty({1, nq}, qkv.options());
  const int64_t group = heads / kv_heads;
  const float scale = 1.f / std::sqrt((float)hd);
  std::vector<float> q(hd), w(pos + 1);
  for (int64_t h = 0; h < heads; ++h) {
    rope(x + h * hd, q.data(), c, s, half);
    attend_head(q.data(), K + (h / group) * cap * hd, V + (h / group) * cap * hd, pos + 1, hd, scale, w.data(),
                y.data_ptr<float>() + h * hd);
  }
  return y;
}

// A sense-reversing barrier that spins briefly, then yields. The project runs OpenMP with
// OMP_WAIT_POLICY=passive (spinning teams starve each other on a shared 2-core machine), which makes
// every OpenMP barrier a futex sleep and wake-up; a forward has ~8 barriers per layer, and a phase
// imbalance is microseconds, so a short spin is both fast here and harmless when oversubscribed.
struct SpinBarrier {
  std::atomic<int> arrived{0}, phase{0};
  int parties = 1;
  void wait(int& sense) {
    if (parties == 1) return;
    sense ^= 1;
    if (arrived.fetch_add(1, std::memory_order_acq_rel) == parties - 1) {
      arrived.store(0, std::memory_order_relaxed);
      phase.store(sense, std::memory_order_release);
      return;
    }
    for (int spins = 0; phase.load(std::memory_order_acquire) != sense; ++spins) {
      if (spins < 20000) _mm_pause(); else sched_yield();
    }
  }
};

// Matrices added to a compiled caller (LeanPlan, ProductChain): each checked once, its tensors kept.
class Products {
 public:
  void add_matrix(torch::Tensor codes_lo, torch::Tensor codes_hi, torch::Tensor group_map, int64_t all_high, int64_t split,
                  int64_t R, int64_t g, int64_t bits_lo, int64_t bits_hi, int64_t scale_kind, torch::Tensor scale_codes,
                  torch::Tensor scale_base, int64_t min_kind, torch::Tensor min_codes, torch::Tensor min_base,
                  int64_t act_levels) {
    keep_.insert(keep_.end(), {codes_lo, codes_hi, group_map, scale_codes, scale_base, min_codes, min_base});
    mats_.emplace_back(codes_lo, codes_hi, group_map, all_high, split, R, g, bits_lo, bits_hi, scale_kind, scale_codes,
                       scale_base, min_kind, min_codes, min_base, act_levels);
    const Product& P = mats_.back();
    maxG_ = std::max(maxG_, P.G); maxB_ = std::max(maxB_, P.in / 32);
  }

 protected:
  std::vector<torch::Tensor> keep_;  // owners of every pointer in mats_ (and of the subclasses' weights)
  std::vector<Product> mats_;
  int64_t maxG_ = 1, maxB_ = 1;
};

// Several products of one input in one call and one OpenMP region, each thread taking its share of
// every product's tiles: how a graph runtime runs several nodes (ONNX Runtime's session.run) and how
// the whole-model forward calls the kernel, so the threads wake once per call, not once per product.
class ProductChain : public Products {
 public:
  explicit ProductChain(std::string path) : kernel_(kernel_of(path)) {}

  std::vector<torch::Tensor> forward(torch::Tensor x) {
    TORCH_CHECK(!mats_.empty(), "the chain has no matrices");
    TORCH_CHECK(x.dtype() == torch::kFloat32 && x.dim() == 2 && x.is_contiguous(), "x must be contiguous float32 [N, in]");
    const Product& first = mats_.front();
    bool need8 = false, need4 = false, need2 = false;
    for (const Product& P : mats_) {
      TORCH_CHECK(P.in == x.size(1) && P.g == first.g && P.act_levels == first.act_levels,
                  "every matrix of a chain takes x's ", x.size(1), " features, one group size and one act_levels");
      need8 |= P.uses(8); need4 |= P.uses(4); need2 |= P.uses(2);
    }
    const int64_t N = x.size(0);
    std::vector<torch::Tensor> ys;
    for (const Product& P : mats_) ys.push_back(torch::empty({N, P.out}, x.options()));
    Acts A;
    kernel_.quantize(A, x.data_ptr<float>(), N, first.in, need8, need4, need2, first.act_levels == 2);
    group_activations(A, first.g);
#pragma omp parallel num_threads(std::max(1, omp_get_max_threads()))
    {
      Scratch S(maxG_, maxB_, 8);
      const int me = omp_get_thread_num(), n_threads = omp_get_num_threads();
      for (size_t i = 0; i < mats_.size(); ++i) mats_[i].multiply(kernel_, A, ys[i].data_ptr<float>(), &S, me, n_threads);
    }
    return ys;
  }

 private:
  Kernel kernel_;
};

class LeanPlan : public Products {
 public:
  LeanPlan(std::string path, int64_t layers, int64_t hidden, int64_t inter, int64_t heads, int64_t kv_heads,
           int64_t head_dim, int64_t vocab, double eps, torch::Tensor cos, torch::Tensor sin)
      : kernel_(kernel_of(path)), L_(layers), H_(hidden), I_(inter), heads_(heads), kvh_(kv_heads), hd_(head_dim),
        V_(vocab), eps_((float)eps), cos_(cos.contiguous()), sin_(sin.contiguous()) {
    TORCH_CHECK(heads % kv_heads == 0 && head_dim % 2 == 0, "heads must be a multiple of kv_heads, head_dim even");
    TORCH_CHECK(cos_.dim() == 2 && cos_.size(1) == head_dim && sin_.sizes() == cos_.sizes(), "rotary tables [positions, head_dim]");
  }

  // add_matrix order: per layer q|k|v, o, gate|up, down; then the head.

  // Order: per layer the attention norm and the MLP norm; then the final norm.
  void add_norm(torch::Tensor w) {
    TORCH_CHECK(w.dtype() == torch::kFloat32 && w.numel() == H_, "norm weights must be float32 [", H_, "]");
    keep_.push_back(w.contiguous());
    norms_.push_back(keep_.back().data_ptr<float>());
  }

  // x [T, hidden] (the embedded tokens) at positions pos.. -> logits [T, vocab]; k/v caches
  // [layers, kv_heads, capacity, head_dim] get positions pos..pos+T-1. A plan given no head and no
  // final norm returns the residual stream after its layers instead, [T, hidden] (an early exit).
  torch::Tensor forward(torch::Tensor x_in, int64_t pos, torch::Tensor kc, torch::Tensor vc) {
    const bool with_head = (int64_t)mats_.size() == 4 * L_ + 1;
    TORCH_CHECK((int64_t)mats_.size() == 4 * L_ + with_head && (int64_t)norms_.size() == 2 * L_ + with_head,
                "plan is incomplete");
    TORCH_CHECK(x_in.dtype() == torch::kFloat32 && x_in.dim() == 2 && x_in.size(1) == H_, "x must be float32 [T, ", H_, "]");
    TORCH_CHECK(kc.is_contiguous() && vc.is_contiguous() && kc.dim() == 4 && kc.size(0) == L_ && kc.size(1) == kvh_ &&
                kc.size(3) == hd_ && vc.sizes() == kc.sizes(), "caches must be contiguous [layers, kv_heads, capacity, head_dim]");
    const int64_t T = x_in.size(0), cap = kc.size(2), half = hd_ / 2;
    const int64_t nq = heads_ * hd_, nkv = kvh_ * hd_, group = heads_ / kvh_;
    TORCH_CHECK(pos >= 0 && pos + T <= cap && pos + T <= cos_.size(0), "positions ", pos, "..", pos + T, " exceed the cache or the rotary table");
    auto x_c = x_in.contiguous();
    std::vector<float> x(x_c.data_ptr<float>(), x_c.data_ptr<float>() + T * H_), h(T * H_), tmp(T * H_);
    std::vector<float> qkv(T * (nq + 2 * nkv)), att(T * nq), gu(T * 2 * I_), act(T * I_);
    auto logits = torch::empty({T, with_head ? V_ : H_}, x_c.options());
    float* K = kc.data_ptr<float>();
    float* Vc = vc.data_ptr<float>();
    const float* cs = cos_.data_ptr<float>();
    const float* sn = sin_.data_ptr<float>();
    const float scale = 1.f / std::sqrt((float)hd_);
    Acts A;
    SpinBarrier barrier;
    const int threads = std::max(1, omp_get_max_threads());
#pragma omp parallel num_threads(threads)
    {
#pragma omp single
      barrier.parties = omp_get_num_threads();
      const int me = omp_get_thread_num(), n_threads = omp_get_num_threads();
      int sense = 0;
      auto sync = [&] { barrier.wait(sense); };
      auto share = [&](int64_t total, auto&& body) {  // this thread's static share of [0, total)
        for (int64_t i = total * me / n_threads; i < total * (me + 1) / n_threads; ++i) body(i);
      };
      Scratch S(maxG_, maxB_, 8);
      std::vector<float> q(hd_), w(pos + T);
      for (int64_t l = 0; l < L_; ++l) {
        const Product &Pqkv = mats_[4 * l], &Po = mats_[4 * l + 1], &Pgu = mats_[4 * l + 2], &Pd = mats_[4 * l + 3];
        float* Kl = K + l * kvh_ * cap * hd_;
        float* Vl = Vc + l * kvh_ * cap * hd_;
        if (me == 0) {
          if (l > 0) for (int64_t i = 0; i < T * H_; ++i) x[i] += tmp[i];  // the previous layer's MLP output
          rms_norm_rows(x.data(), norms_[2 * l], h.data(), T, H_, eps_);
          Pqkv.quantize(kernel_, A, h.data(), T);
        }
        sync();
        Pqkv.multiply(kernel_, A, qkv.data(), &S, me, n_threads);
        sync();
        share(T * kvh_, [&](int64_t i) {  // rotary on k and the cache write of k and v
          const int64_t t = i / kvh_, p = pos + t;
          write_kv(qkv.data() + t * (nq + 2 * nkv), nq, nkv, i % kvh_, hd_, Kl, Vl, cap, p, cs + p * hd_, sn + p * hd_);
        });
        sync();
        share(T * heads_, [&](int64_t i) {  // query (t, head) over positions 0..pos+t
          const int64_t t = i / heads_, hh = i % heads_, p = pos + t, n = p + 1;
          rope(qkv.data() + t * (nq + 2 * nkv) + hh * hd_, q.data(), cs + p * hd_, sn + p * hd_, half);
          attend_head(q.data(), Kl + (hh / group) * cap * hd_, Vl + (hh / group) * cap * hd_, n, hd_, scale, w.data(),
                      att.data() + t * nq + hh * hd_);
        });
        sync();
        if (me == 0) Po.quantize(kernel_, A, att.data(), T);
        sync();
        Po.multiply(kernel_, A, tmp.data(), &S, me, n_threads);
        sync();
        if (me == 0) {
          for (int64_t i = 0; i < T * H_; ++i) x[i] += tmp[i];
          rms_norm_rows(x.data(), norms_[2 * l + 1], h.data(), T, H_, eps_);
          Pgu.quantize(kernel_, A, h.data(), T);
        }
        sync();
        Pgu.multiply(kernel_, A, gu.data(), &S, me, n_threads);
        sync();
        if (me == 0) {
          for (int64_t t = 0; t < T; ++t)
            for (int64_t i = 0; i < I_; ++i) {
              const float gate = gu[t * 2 * I_ + i];
              act[t * I_ + i] = gate / (1.f + std::exp(-gate)) * gu[t * 2 * I_ + I_ + i];
            }
          Pd.quantize(kernel_, A, act.data(), T);
        }
        sync();
        Pd.multiply(kernel_, A, tmp.data(), &S, me, n_threads);
        sync();
      }
      if (me == 0 && L_ > 0) for (int64_t i = 0; i < T * H_; ++i) x[i] += tmp[i];
      if (with_head) {
        const Product& Ph = mats_[4 * L_];
        if (me == 0) {
          rms_norm_rows(x.data(), norms_[2 * L_], h.data(), T, H_, eps_);
          Ph.quantize(kernel_, A, h.data(), T);
        }
        sync();
        Ph.multiply(kernel_, A, logits.data_ptr<float>(), &S, me, n_threads);
      }
    }
    if (!with_head) std::copy(x.begin(), x.end(), logits.data_ptr<float>());
    return logits;
  }

 private:
  Kernel kernel_;
  int64_t L_, H_, I_, heads_, kvh_, hd_, V_;
  float eps_;
  torch::Tensor cos_, sin_;
  std::vector<const float*> norms_;  // owned by keep_
};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  // The GIL is released inside these: a draft and a target on two Python threads (PEARL) run at once.
  m.def("int_matmul", &int_matmul, py::call_guard<py::gil_scoped_release>());
  m.def("path_supported", &path_supported);
  m.def("attend_one", &attend_one, py::call_guard<py::gil_scoped_release>());
  py::class_<Products>(m, "Products").def("add_matrix", &Products::add_matrix);
  py::class_<ProductChain, Products>(m, "ProductChain")
      .def(py::init<std::string>())
      .def("forward", &ProductChain::forward, py::call_guard<py::gil_scoped_release>());
  py::class_<LeanPlan, Products>(m, "LeanPlan")
      .def(py::init<std::string, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, double, torch::Tensor,
                    torch::Tensor>())
      .def("add_norm", &LeanPlan::add_norm)
      .def("forward", &LeanPlan::forward, py::call_guard<py::gil_scoped_release>());
}
"""


def _source() -> str:
    parts = [_HEADER]
    for path in PATHS:
        target = _TARGETS[path]
        if target:
            parts.append(f'#pragma GCC push_options\n#pragma GCC target("{target}")\n')
        parts.append(f"#define {_ISA_MACRO[path]} 1\nnamespace isa_{path} {{\n{_BODY}\n}}\n#undef {_ISA_MACRO[path]}\n")
        if target:
            parts.append("#pragma GCC pop_options\n")
    parts.append(_FOOTER)
    return "".join(parts)


_EXTENSION = InlineExtension(
    "quant_int_kernel_v33",
    _source,
    None,  # the source binds its own functions and the LeanPlan class (GIL released)
    ["-O3", "-fopenmp"],
    disable_env="QUANT_INT_KERNEL",
)
load = _EXTENSION.load  # the compiled extension, built on first call; None when it cannot be built here
_paths: list[str] = []  # the paths this CPU runs, found once


def available() -> bool:
    return load() is not None


def unavailable_reason() -> str:
    return _EXTENSION.reason


def paths() -> list[str]:
    """The kernel paths this CPU can run, fastest first."""
    if not _paths:
        built = load()
        _paths.extend(p for p in PATHS if built is not None and built.path_supported(p))
    return list(_paths)


def module():
    """The compiled extension (built on first call); RuntimeError naming why where it cannot be built."""
    built = _EXTENSION.module if _EXTENSION.module is not None else load()
    if built is None:
        raise RuntimeError(f"integer kernel unavailable: {unavailable_reason()}")
    return built


def matmul_function():
    """(int_matmul, path) for a product: the compiled function and `best_path()` (read per call: tests force it)."""
    int_matmul = module().int_matmul
    forced = os.environ.get("QUANT_INT_PATH")
    return int_matmul, (best_path() if forced or not _paths else _paths[0])


def best_path() -> str:
    """QUANT_INT_PATH forces a path (tests, benchmarks); otherwise the fastest this CPU runs."""
    forced = os.environ.get("QUANT_INT_PATH")
    supported = paths()
    if forced:
        if forced not in supported:
            raise ValueError(f"QUANT_INT_PATH={forced!r} is not one of the paths this CPU runs: {supported}")
        return forced
    if not supported:
        raise RuntimeError(f"integer kernel unavailable: {unavailable_reason()}")
    return supported[0]
