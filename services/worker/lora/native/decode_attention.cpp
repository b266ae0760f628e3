// One query per row against that row's keys: out[b, h] = softmax(q[b, h] . k[b, h / G, t] * scale over the keys t
// the row attends to) . v[b, h / G, t], G = query heads per key/value head. A decode step's attention. Built and
// loaded by adapterfleet/worker/lora/native.py, beside lora_rows.cpp.
//
// A decode step's attention is bound by reading the keys and values once. torch's CPU flash attention runs it far
// from that: 0.58 ms for 32 rows of 96 positions (6.3 MB) where a sum of the same bytes takes 0.06, and it reads every
// position of the batch's width, while a batch of rows that joined at different times is left-padded to its longest
// row (in the open loop of benchmarks/engine_vs_vllm.py about half the width is padding). Here each (row, key/value
// head) is one task: the positions the row attends to are listed once, each key is read once per query head
// (scores), then each value once per query head (the weighted sum; after the first, from cache); padding is never
// read. Tasks are split across the calling thread's OpenMP team. The last position (the row's own new token) is
// always attended to, as in ragged.py's masks.
//
// Per task the arithmetic is a fixed sequence that depends only on that row's own query, keys, values and mask, so a
// row's result does not depend on the batch it is in.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "simd.h"

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

using namespace adapterfleet_simd;

// Scores of one query against keys k[idx[i] * ks] for i < n, times scale; D the head dimension (a multiple of 8).
// Four keys at a time: four independent chains of FMAs. Per key the sum runs in the same order whatever the block.
template <int D>
void scores_of(const float* q, const float* k, int64_t ks, const int64_t* idx, int64_t n, float scale, float* out) {
  constexpr int C = D / 8;
  v8 qv[C];
  for (int c = 0; c < C; ++c) qv[c] = load8(q + 8 * c);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float* k0 = k + idx[i] * ks;
    const float* k1 = k + idx[i + 1] * ks;
    const float* k2 = k + idx[i + 2] * ks;
    const float* k3 = k + idx[i + 3] * ks;
    v8 a0 = splat8(0.f), a1 = a0, a2 = a0, a3 = a0;
    for (int c = 0; c < C; ++c) {
      a0 = fma8(qv[c], load8(k0 + 8 * c), a0);
      a1 = fma8(qv[c], load8(k1 + 8 * c), a1);
      a2 = fma8(qv[c], load8(k2 + 8 * c), a2);
      a3 = fma8(qv[c], load8(k3 + 8 * c), a3);
    }
    out[i] = sum8(a0) * scale;
    out[i + 1] = sum8(a1) * scale;
    out[i + 2] = sum8(a2) * scale;
    out[i + 3] = sum8(a3) * scale;
  }
  for (; i < n; ++i) {
    const float* kt = k + idx[i] * ks;
    v8 a0 = splat8(0.f);
    for (int c = 0; c < C; ++c) a0 = fma8(qv[c], load8(kt + 8 * c), a0);
    out[i] = sum8(a0) * scale;
  }
}

// out[0:D] = sum over i of p[i] * v[idx[i] * vs], the accumulators in registers.
template <int D>
void weighted_sum(const float* p, const float* v, int64_t vs, const int64_t* idx, int64_t n, float* out) {
  constexpr int C = D / 8;
  v8 acc[C];
  for (int c = 0; c < C; ++c) acc[c] = splat8(0.f);
  for (int64_t i = 0; i < n; ++i) {
    const float* vt = v + idx[i] * vs;
    const v8 pi = splat8(p[i]);
    for (int c = 0; c < C; ++c) acc[c] = fma8(pi, load8(vt + 8 * c), acc[c]);
  }
  for (int c = 0; c < C; ++c) store8(out + 8 * c, acc[c]);
}

// Any head dimension, one key at a time.
void scores_any(const float* q, const float* k, int64_t ks, const int64_t* idx, int64_t n, float scale, float* out,
                int64_t d) {
  for (int64_t i = 0; i < n; ++i) {
    const float* kt = k + idx[i] * ks;
    float s = 0.f;
    for (int64_t c = 0; c < d; ++c) s = __builtin_fmaf(q[c], kt[c], s);
    out[i] = s * scale;
  }
}

void weighted_sum_any(const float* p, const float* v, int64_t vs, const int64_t* idx, int64_t n, float* out,
                      int64_t d) {
  for (int64_t c = 0; c < d; ++c) out[c] = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    const float* vt = v + idx[i] * vs;
    for (int64_t c = 0; c < d; ++c) out[c] = __builtin_fmaf(p[i], vt[c], out[c]);
  }
}

template <typename M>
void attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const M* mask, int64_t ms0, int64_t ms1,
            float scale, const at::Tensor& out) {
  const int64_t rows = q.size(0), hq = q.size(1), d = q.size(2), hkv = k.size(1), width = k.size(2);
  const int64_t groups = hq / hkv;
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t qs0 = q.stride(0), qs1 = q.stride(1), ks0 = k.stride(0), ks1 = k.stride(1), ks2 = k.stride(2);
  const int64_t vs0 = v.stride(0), vs1 = v.stride(1), vs2 = v.stride(2), os0 = out.stride(0), os1 = out.stride(1);
  const int64_t tasks = rows * hkv;
  // OpenMP directly, on the calling thread's team (the engine's), as lora_rows.cpp explains. Dynamic: rows differ in
  // how many positions they attend to.
#pragma omp parallel
  {
    std::vector<int64_t> seen;       // the positions a row attends to
    std::vector<float> scores;       // one query head's, then its weights
    int64_t listed = -1;             // the row `seen` lists
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t b = task / hkv, j = task % hkv;
      if (listed != b) {
        seen.clear();
        const M* m = mask + b * ms0;
        for (int64_t t = 0; t + 1 < width; ++t)
          if (m[t * ms1]) seen.push_back(t);
        seen.push_back(width - 1);
        listed = b;
      }
      const int64_t n = static_cast<int64_t>(seen.size());
      scores.resize((n + 7) / 8 * 8);
      const float* kb = kp + b * ks0 + j * ks1;
      const float* vb = vp + b * vs0 + j * vs1;
      for (int64_t g = 0; g < groups; ++g) {
        const float* qg = qp + b * qs0 + (j * groups + g) * qs1;
        float* og = op + b * os0 + (j * groups + g) * os1;
        float* sg = scores.data();
        switch (d) {
          case 64: scores_of<64>(qg, kb, ks2, seen.data(), n, scale, sg); break;
          case 128: scores_of<128>(qg, kb, ks2, seen.data(), n, scale, sg); break;
          default: scores_any(qg, kb, ks2, seen.data(), n, scale, sg, d);
        }
        float top = -INFINITY;
        for (int64_t i = 0; i < n; ++i) top = sg[i] > top ? sg[i] : top;
        // the weights, eight at a time (the buffer has room for a last, partial eight: its extra lanes are dropped)
        const int64_t n8 = (n + 7) / 8 * 8;
        for (int64_t i = n; i < n8; ++i) sg[i] = top;
        v8 sum = splat8(0.f);
        const v8 tops = splat8(top);
        for (int64_t i = 0; i < n8; i += 8) {
          v8 w = exp8(load8(sg + i) - tops);
          if (i + 8 > n)
            for (int64_t l = n - i; l < 8; ++l) w[l] = 0.f;
          store8(sg + i, w);
          sum = sum + w;
        }
        const v8 inv = splat8(1.f / sum8(sum));
        for (int64_t i = 0; i < n8; i += 8) store8(sg + i, load8(sg + i) * inv);
        switch (d) {
          case 64: weighted_sum<64>(sg, vb, vs2, seen.data(), n, og); break;
          case 128: weighted_sum<128>(sg, vb, vs2, seen.data(), n, og); break;
          default: weighted_sum_any(sg, vb, vs2, seen.data(), n, og, d);
        }
      }
    }
  }
}

void decode_attention_(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                       double scale, const at::Tensor& out) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 4 && v.dim() == 4 && mask.dim() == 2 && out.dim() == 3,
              "decode_attention_: q [B, Hq, D], k and v [B, Hkv, T, D], mask [B, T], out [B, Hq, D]");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat &&
                  out.scalar_type() == at::kFloat,
              "decode_attention_: float32 q, k, v and out");
  TORCH_CHECK(mask.scalar_type() == at::kLong || mask.scalar_type() == at::kBool,
              "decode_attention_: an int64 or bool mask");
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu() && mask.device().is_cpu() &&
                  out.device().is_cpu(),
              "decode_attention_: CPU tensors");
  const int64_t rows = q.size(0), hq = q.size(1), d = q.size(2), hkv = k.size(1), width = k.size(2);
  TORCH_CHECK(hkv > 0 && hq % hkv == 0 && k.size(0) == rows && k.size(3) == d && v.sizes() == k.sizes() &&
                  mask.size(0) == rows && mask.size(1) == width && width > 0 && out.size(0) == rows &&
                  out.size(1) == hq && out.size(2) == d,
              "decode_attention_: shapes do not match");
  TORCH_CHECK(q.stride(2) == 1 && k.stride(3) == 1 && v.stride(3) == 1 && out.stride(2) == 1,
              "decode_attention_: the head dimension contiguous");
  if (mask.scalar_type() == at::kLong)
    attend(q, k, v, mask.data_ptr<int64_t>(), mask.stride(0), mask.stride(1), static_cast<float>(scale), out);
  else
    attend(q, k, v, mask.data_ptr<bool>(), mask.stride(0), mask.stride(1), static_cast<float>(scale), out);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ADAPTERFLEET_NS, m) {
  m.def("decode_attention_(Tensor q, Tensor k, Tensor v, Tensor mask, float scale, Tensor(a!) out) -> ()",
        &decode_attention_);
}
