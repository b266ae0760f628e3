// Eight floats as one value, shared by the native kernels (lora_rows.cpp, decode_attention.cpp).
#pragma once

#if defined(__FMA__) && defined(__AVX__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <cstring>

namespace adapterfleet_simd {

// GCC / Clang vector extensions, so the compiler keeps accumulators in registers whatever the target's vector width
// (AVX2 and AVX-512 as one or two ymm/zmm, NEON as two q registers).
typedef float v8 __attribute__((vector_size(32)));
inline v8 load8(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof v);  // unaligned
  return v;
}
inline void store8(float* p, v8 v) { std::memcpy(p, &v, sizeof v); }
inline v8 splat8(float f) { return v8{f, f, f, f, f, f, f, f}; }

// a * b + c rounded once, written out: the library is compiled with -ffp-contract=off, so no product and sum are fused
// or left apart at the compiler's choice. Left to it, GCC fused them in some blocks and not in others (znver2, rank
// 8), and an item's result then depended on the block it was in.
inline v8 fma8(v8 a, v8 b, v8 c) {
#if defined(__FMA__) && defined(__AVX__)
  return _mm256_fmadd_ps(a, b, c);  // v8 is __m256's own type in GCC and Clang
#else
  v8 r;
  for (int l = 0; l < 8; ++l) r[l] = __builtin_fmaf(a[l], b[l], c[l]);
  return r;
#endif
}

typedef int32_t i8 __attribute__((vector_size(32)));

// e^x per lane for x in [-87.3, 88.7] (clamped to it), within 2 ulp: Cephes' expf, x = n ln2 + r with |r| <= ln2 / 2,
// e^r by its polynomial, 2^n put into the exponent's bits. Written as separate products and sums (no FMA), so it
// rounds alike wherever it is compiled.
inline v8 exp8(v8 x) {
  const v8 lo = splat8(-87.3f), hi = splat8(88.7f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  v8 fx = x * splat8(1.44269504088896341f) + splat8(0.5f);
  v8 n = __builtin_convertvector(__builtin_convertvector(fx, i8), v8);  // toward zero, then down to the floor
  n = n - (n > fx ? splat8(1.f) : splat8(0.f));
  const v8 r = x - n * splat8(0.693359375f) - n * splat8(-2.12194440e-4f);
  const v8 z = r * r;
  v8 y = splat8(1.9875691500e-4f);
  y = y * r + splat8(1.3981999507e-3f);
  y = y * r + splat8(8.3334519073e-3f);
  y = y * r + splat8(4.1665795894e-2f);
  y = y * r + splat8(1.6666665459e-1f);
  y = y * r + splat8(5.0000001201e-1f);
  y = y * z + r + splat8(1.f);
  const i8 bits = (__builtin_convertvector(n, i8) + 127) << 23;
  v8 scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

inline float sum8(v8 v) {  // in a fixed order
  return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

}  // namespace adapterfleet_simd
