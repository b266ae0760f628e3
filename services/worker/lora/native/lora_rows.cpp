// Each item's LoRA term, added in place: out[i] += (x[i] @ a[rows[i]]) @ b[rows[i]], for items whose stack row is
// not 0 (row 0 holds no adapter: A = B = 0). Built and loaded by adapterfleet/worker/lora/native.py.
//
// A decode step's low-rank terms are bound by reading each row's A and B once (rank 16: 32-90 KB a row and module);
// torch's bmm / baddbmm over stack views or embedding_bag read them at well under the memory's streaming rate. Here
// one pass per item reads A row by row into a rank-wide accumulator, then adds each of B's rows scaled by it.
// A prefill's tokens are runs of items on one stack row: there the terms are bound by arithmetic (A and B stay in
// cache), and a run is taken a few items at a time, each of A's and B's rows loaded once for all of them, which keeps
// the FMA units busy where torch's rank-16 matmuls (and a Python loop over the runs of a fused step) did not.
// Runs are split across the calling thread's OpenMP team.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "simd.h"

#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

namespace {

using namespace adapterfleet_simd;

// One block's terms: T consecutive items (x rows x[t * xs], out rows out[t * os]) on one stack row, so each of A's and
// B's rows is loaded once for all T items, and the T items' accumulators are independent chains. T == 1 is a decode
// row; longer runs of one row (a prefill's tokens) go T at a time. R: the rank (a multiple of 8), known when compiling.
// Per item the arithmetic is the same sequence whatever T (h[k] summed over i in order, then out[o] += h[k] * b[k][o]
// for k in order), so an item's result does not depend on the block it was in.
template <int R, int T>
void block(const float* x, int64_t xs, const float* a, const float* b, float* out, int64_t os, int64_t in,
           int64_t n_out) {
  static_assert(R % 8 == 0, "ranks that are not a multiple of 8 take item_any");
  constexpr int V = R / 8;
  v8 h[T][V] = {};
  for (int64_t i = 0; i < in; ++i) {  // h[t] = x[t] @ a
    v8 ai[V];
    for (int j = 0; j < V; ++j) ai[j] = load8(a + i * R + 8 * j);
    for (int t = 0; t < T; ++t) {
      const v8 xt = splat8(x[t * xs + i]);
      for (int j = 0; j < V; ++j) h[t][j] = fma8(xt, ai[j], h[t][j]);
    }
  }
  float hs[T][R];
  std::memcpy(hs, h, sizeof hs);
  int64_t o0 = 0;
  for (; o0 + 16 <= n_out; o0 += 16) {  // out[t] += h[t] @ b, 16 outputs at a time
    v8 acc[T][2];
    for (int t = 0; t < T; ++t) {
      acc[t][0] = load8(out + t * os + o0);
      acc[t][1] = load8(out + t * os + o0 + 8);
    }
    for (int k = 0; k < R; ++k) {
      const v8 b0 = load8(b + k * n_out + o0), b1 = load8(b + k * n_out + o0 + 8);
      for (int t = 0; t < T; ++t) {
        const v8 hk = splat8(hs[t][k]);
        acc[t][0] = fma8(hk, b0, acc[t][0]);
        acc[t][1] = fma8(hk, b1, acc[t][1]);
      }
    }
    for (int t = 0; t < T; ++t) {
      store8(out + t * os + o0, acc[t][0]);
      store8(out + t * os + o0 + 8, acc[t][1]);
    }
  }
  for (int t = 0; t < T; ++t)  // the last n_out % 16 outputs
    for (int64_t o = o0; o < n_out; ++o) {
      float v = out[t * os + o];
      for (int k = 0; k < R; ++k) v = __builtin_fmaf(hs[t][k], b[k * n_out + o], v);
      out[t * os + o] = v;
    }
}

// Items per block at rank R: the A pass keeps T * R / 8 vectors of accumulators, within the 16 registers of AVX2.
// Measured on a 2-core Zen (znver1) box, one thread, rank 16, 64-token runs: T = 1 15.4, 2 15.1, 4 18.2 GFLOP/s.
template <int R>
constexpr int kBlock = R <= 16 ? 4 : (R == 32 ? 2 : 1);

template <int R>
void run(const float* x, int64_t xs, const float* a, const float* b, float* out, int64_t os, int64_t in,
         int64_t n_out, int64_t count) {
  constexpr int T = kBlock<R>;
  int64_t t = 0;
  for (; t + T <= count; t += T) block<R, T>(x + t * xs, xs, a, b, out + t * os, os, in, n_out);
  for (; t < count; ++t) block<R, 1>(x + t * xs, xs, a, b, out + t * os, os, in, n_out);
}

// Any rank (given as r), one item at a time.
void item_any(const float* x, const float* a, const float* b, float* out, int64_t in, int64_t r, int64_t n_out) {
  std::vector<float> h(r, 0.f);
  for (int64_t i = 0; i < in; ++i) {
    const float xi = x[i];
    const float* ai = a + i * r;
#pragma omp simd
    for (int64_t k = 0; k < r; ++k) h[k] = __builtin_fmaf(xi, ai[k], h[k]);
  }
  for (int64_t k = 0; k < r; ++k) {
    const float hk = h[k];
    const float* bk = b + k * n_out;
#pragma omp simd
    for (int64_t o = 0; o < n_out; ++o) out[o] = __builtin_fmaf(hk, bk[o], out[o]);
  }
}

void lora_rows_(const at::Tensor& x, const at::Tensor& a, const at::Tensor& b, const at::Tensor& rows,
                const at::Tensor& out) {
  TORCH_CHECK(x.dim() == 2 && a.dim() == 3 && b.dim() == 3 && rows.dim() == 1 && out.dim() == 2,
              "lora_rows_: x [n, in], a [S, in, r], b [S, r, out], rows [n], out [n, out]");
  TORCH_CHECK(x.scalar_type() == at::kFloat && a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat &&
                  out.scalar_type() == at::kFloat && rows.scalar_type() == at::kLong,
              "lora_rows_: float32 tensors and int64 rows");
  TORCH_CHECK(x.device().is_cpu() && a.device().is_cpu() && b.device().is_cpu() && rows.device().is_cpu() &&
                  out.device().is_cpu(),
              "lora_rows_: CPU tensors");
  const int64_t n = x.size(0), in = x.size(1), slots = a.size(0), r = a.size(2), n_out = b.size(2);
  TORCH_CHECK(a.size(1) == in && b.size(0) == slots && b.size(1) == r && rows.size(0) == n && out.size(0) == n &&
                  out.size(1) == n_out,
              "lora_rows_: shapes do not match");
  TORCH_CHECK(a.is_contiguous() && b.is_contiguous() && rows.is_contiguous() && x.stride(1) == 1 &&
                  out.stride(1) == 1,
              "lora_rows_: a, b, rows contiguous; x and out with contiguous rows");
  const int64_t* row = rows.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) TORCH_CHECK(row[i] >= 0 && row[i] < slots, "lora_rows_: stack row out of range");
  const float* xp = x.data_ptr<float>();
  const float* ap = a.data_ptr<float>();
  const float* bp = b.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t xs = x.stride(0), os = out.stride(0);
  // OpenMP directly, on the calling thread's team (the engine's, at its --threads), not at::parallel_for. That
  // inlines ATen's per-thread "threads initialised" flag, so this library would carry a copy of its own: on its
  // first call in the engine's thread it re-ran at::init_num_threads(), which set that thread to the count last
  // set by *any* thread (1: the worker's other threads run torch on one), and every op of every later step ran on
  // one thread (measured: base-model waves at 0.65-0.70x, the engine thread's partner idle).
  // Work units: runs of consecutive items on one stack row (a prefill's tokens), cut at kMaxRun items so the team
  // shares a long run; rows of a decode step are runs of one.
  constexpr int64_t kMaxRun = 16;
  std::vector<std::pair<int64_t, int64_t>> runs;  // (first item, count)
  runs.reserve(n);
  for (int64_t i = 0; i < n;) {
    int64_t j = i + 1;
    while (j < n && j - i < kMaxRun && row[j] == row[i]) ++j;
    if (row[i] != 0) runs.emplace_back(i, j - i);
    i = j;
  }
  const int64_t n_runs = static_cast<int64_t>(runs.size());
#pragma omp parallel for schedule(static)
  for (int64_t u = 0; u < n_runs; ++u) {
    const auto [first, count] = runs[u];
    const int64_t s = row[first];
    const float* as = ap + s * in * r;
    const float* bs = bp + s * r * n_out;
    const float* xi = xp + first * xs;
    float* oi = op + first * os;
    switch (r) {
      case 8: run<8>(xi, xs, as, bs, oi, os, in, n_out, count); break;
      case 16: run<16>(xi, xs, as, bs, oi, os, in, n_out, count); break;
      case 32: run<32>(xi, xs, as, bs, oi, os, in, n_out, count); break;
      case 64: run<64>(xi, xs, as, bs, oi, os, in, n_out, count); break;
      default:
        for (int64_t t = 0; t < count; ++t) item_any(xi + t * xs, as, bs, oi + t * os, in, r, n_out);
    }
  }
}

}  // namespace

TORCH_LIBRARY(ADAPTERFLEET_NS, m) {
  m.def("lora_rows_(Tensor x, Tensor a, Tensor b, Tensor rows, Tensor(a!) out) -> ()", &lora_rows_);
}
