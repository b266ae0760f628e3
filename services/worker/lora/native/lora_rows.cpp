// Each item's LoRA term, added in place: out[i] += (x[i] @ a[rows[i]]) @ b[rows[i]], for items whose stack row is
// not 0 (row 0 holds no adapter: A = B = 0). Built and loaded by adapterfleet/worker/lora/native.py.
//
// A decode step's low-rank terms are bound by reading each row's A and B once (rank 16: 32-90 KB a row and module);
// torch's bmm / baddbmm over stack views or embedding_bag read them at well under the memory's streaming rate. Here
// one pass per item reads A row by row into a rank-wide accumulator, then adds each of B's rows scaled by it.
// Items are split across the calling thread's OpenMP team.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

namespace {

// One item's term, accumulated in h (rank floats, zeroed). R > 0: the rank, known when compiling (the loops over it
// are unrolled and, with h a local array of the caller's, h stays in registers); R == 0: any rank, given as r.
template <int R>
inline void add_term(float* h, const float* x, const float* a, const float* b, float* out, int64_t in, int64_t r,
                     int64_t n_out) {
  const int64_t rank = R > 0 ? R : r;
  for (int64_t i = 0; i < in; ++i) {
    const float xi = x[i];
    const float* ai = a + i * rank;
#pragma omp simd
    for (int64_t k = 0; k < rank; ++k) h[k] += xi * ai[k];
  }
  for (int64_t k = 0; k < rank; ++k) {
    const float hk = h[k];
    const float* bk = b + k * n_out;
#pragma omp simd
    for (int64_t o = 0; o < n_out; ++o) out[o] += hk * bk[o];
  }
}

template <int R>
void item(const float* x, const float* a, const float* b, float* out, int64_t in, int64_t n_out) {
  float h[R] = {};
  add_term<R>(h, x, a, b, out, in, R, n_out);
}

void item_any(const float* x, const float* a, const float* b, float* out, int64_t in, int64_t r, int64_t n_out) {
  std::vector<float> h(r, 0.f);
  add_term<0>(h.data(), x, a, b, out, in, r, n_out);
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
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t s = row[i];
    if (s == 0) continue;
    const float* ai = ap + s * in * r;
    const float* bi = bp + s * r * n_out;
    const float* xi = xp + i * xs;
    float* oi = op + i * os;
    switch (r) {
      case 8: item<8>(xi, ai, bi, oi, in, n_out); break;
      case 16: item<16>(xi, ai, bi, oi, in, n_out); break;
      case 32: item<32>(xi, ai, bi, oi, in, n_out); break;
      case 64: item<64>(xi, ai, bi, oi, in, n_out); break;
      default: item_any(xi, ai, bi, oi, in, r, n_out);
    }
  }
}

}  // namespace

TORCH_LIBRARY(ADAPTERFLEET_NS, m) {
  m.def("lora_rows_(Tensor x, Tensor a, Tensor b, Tensor rows, Tensor(a!) out) -> ()", &lora_rows_);
}
