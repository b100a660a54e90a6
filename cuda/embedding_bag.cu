// CUDA kernels of the table-batched embedding-bag ops defined in ops/embedding_bag.py (m.impl only).
//
// Forward: the D columns are split into packs of VEC elements (16-byte loads); a row needs
// LPR = next_pow2(ceil(D / VEC)) lanes (at most 32), so a warp holds G = 32 / LPR lane groups, each pooling
// one bag (f, b) with four rows in flight, added in index order.
//
// Backward: every index becomes a global row; (row, bag) pairs are radix-sorted by row (stable, so a row's
// contributions keep their positions' order); one warp starts at each run's first entry, sums the run in a
// fixed order and either writes the row gradient or applies SGD / row-wise Adagrad to the row in place.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cub/device/device_radix_sort.cuh>
#include <torch/library.h>

#include <tuple>

#include "common.h"

namespace recpipe {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / kWarp;
constexpr int kUnroll = 4;     // rows of one bag each lane group has in flight
constexpr int kMaxChunks = 4;  // the backward keeps a whole row in registers: D <= kMaxChunks * 32 * VEC

enum class Mode : int { kRowGrad = 0, kSgd = 1, kAdagrad = 2 };

// ------------------------------------------------------------------------------------------------ forward
// A group of LPR lanes pools one bag (f, b); a warp holds 32 / LPR groups, so it pools that many consecutive
// bags. Each group keeps kUnroll rows in flight and adds them in index order (deterministic).
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads) forward_kernel(
    const scalar_t* __restrict__ weight, const int64_t* __restrict__ table_offsets,
    const int64_t* __restrict__ indices, const int64_t* __restrict__ offsets, scalar_t* __restrict__ out,
    int64_t batch, int64_t num_tables, int64_t total_rows, int dim, int pooling, int lpr) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % kWarp;
  const int groups = kWarp / lpr;
  const int sub = lane % lpr;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int64_t bag = warp * groups + lane / lpr;
  if (bag >= batch * num_tables) return;  // no shuffles below: groups may leave on their own
  const int64_t f = bag / batch;
  const int64_t b = bag - f * batch;
  const int64_t start = offsets[bag];
  const int64_t end = offsets[bag + 1];
  const int64_t base = table_offsets[f];
  const int64_t rows = table_offsets[f + 1] - base;
  CUDA_KERNEL_ASSERT(base >= 0 && rows >= 0 && base + rows <= total_rows);  // table f lies inside the weight
  const acc_t scale = (pooling == 1 && end > start) ? acc_t(1) / static_cast<acc_t>(end - start) : acc_t(1);
  scalar_t* dst = out + (b * num_tables + f) * dim;
  for (int d0 = sub * VEC; d0 < dim; d0 += lpr * VEC) {
    acc_t acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = acc_t(0);
    int64_t p = start;
    for (; p + kUnroll <= end; p += kUnroll) {
      int64_t idx[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        idx[u] = indices[p + u];
        CUDA_KERNEL_ASSERT(idx[u] >= 0 && idx[u] < rows);
      }
      acc_t v[kUnroll][VEC];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) load_pack<scalar_t, acc_t, VEC>(weight + (base + idx[u]) * dim + d0, v[u]);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[k] += v[u][k];
      }
    }
    for (; p < end; ++p) {
      const int64_t idx = indices[p];
      CUDA_KERNEL_ASSERT(idx >= 0 && idx < rows);
      acc_t v[VEC];
      load_pack<scalar_t, acc_t, VEC>(weight + (base + idx) * dim + d0, v);
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc[k] += v[k];
    }
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] *= scale;
    store_pack<scalar_t, acc_t, VEC>(dst + d0, acc);
  }
}

// ------------------------------------------------------------------------------------------------ backward
// rows[p] = table_offsets[f] + indices[p], bag_of[p] = f * B + b; one warp per bag, lanes stride its positions.
__global__ void __launch_bounds__(kThreads) linearize_kernel(
    const int64_t* __restrict__ table_offsets, const int64_t* __restrict__ indices,
    const int64_t* __restrict__ offsets, int64_t* __restrict__ rows, int32_t* __restrict__ bag_of,
    int64_t batch, int64_t num_tables, int64_t total_rows) {
  const int64_t bag = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (bag >= batch * num_tables) return;
  const int64_t f = bag / batch;
  const int64_t base = table_offsets[f];
  const int64_t size = table_offsets[f + 1] - base;
  CUDA_KERNEL_ASSERT(base >= 0 && size >= 0 && base + size <= total_rows);  // table f lies inside the weight
  for (int64_t p = offsets[bag] + threadIdx.x % kWarp; p < offsets[bag + 1]; p += kWarp) {
    const int64_t idx = indices[p];
    CUDA_KERNEL_ASSERT(idx >= 0 && idx < size);
    rows[p] = base + idx;
    bag_of[p] = static_cast<int32_t>(bag);
  }
}

// head[i] = 1 where sorted_rows[i] starts a run of equal rows.
__global__ void run_heads_kernel(const int64_t* __restrict__ sorted_rows, int64_t* __restrict__ head, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) head[i] = (i == 0 || sorted_rows[i] != sorted_rows[i - 1]) ? 1 : 0;
}

// One group of LPR lanes per sorted position (a warp covers 32 / LPR consecutive positions); only a run's
// first position works, summing the run's gradients in sorted (= original position) order. MODE kRowGrad writes the sum to grads[run_id[i] - 1]; kSgd / kAdagrad update weight
// (and state) in place. CHUNKS = packs of LPR * VEC columns a lane keeps in registers (1 when D <= LPR * VEC).
// The row's weights and state are loaded before the gradients, so their latency overlaps the gradient reads.
template <typename scalar_t, int VEC, int CHUNKS, Mode MODE>
__global__ void __launch_bounds__(kThreads) segment_kernel(
    const int64_t* __restrict__ sorted_rows, const int32_t* __restrict__ sorted_bags,
    const int64_t* __restrict__ offsets, const scalar_t* __restrict__ grad_output, int64_t n, int64_t batch,
    int64_t num_tables, int dim, int pooling, int lpr,
    const int64_t* __restrict__ run_id, int64_t* __restrict__ unique_rows, at::opmath_type<scalar_t>* __restrict__ grads,
    scalar_t* __restrict__ weight, float* __restrict__ state, float lr, float eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % kWarp;
  const int groups = kWarp / lpr;
  const int group = lane / lpr;
  const int sub = lane % lpr;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int64_t i = warp * groups + group;
  if (i >= n) return;  // group-uniform: shuffles below only span the group
  const int64_t row = sorted_rows[i];
  if (i > 0 && sorted_rows[i - 1] == row) return;  // not a run's head: group-uniform
  const unsigned mask = lpr == kWarp ? kFullMask : ((1u << lpr) - 1u) << (group * lpr);
  const int chunks = (dim + lpr * VEC - 1) / (lpr * VEC);
  constexpr bool kUpdate = MODE != Mode::kRowGrad;
  scalar_t* w = kUpdate ? weight + row * dim : nullptr;
  acc_t wv[CHUNKS][VEC];
  float old_state = 0.f;
  if (kUpdate) {
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const int d0 = (c * lpr + sub) * VEC;
      if (c < chunks && d0 < dim) load_pack<scalar_t, acc_t, VEC>(w + d0, wv[c]);
    }
    if (MODE == Mode::kAdagrad) old_state = state[row];
  }
  acc_t g[CHUNKS][VEC];
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) g[c][k] = acc_t(0);
  }
  for (int64_t p = i; p < n && sorted_rows[p] == row; ++p) {
    const int64_t bag = sorted_bags[p];
    const int64_t f = bag / batch;
    const scalar_t* src = grad_output + ((bag - f * batch) * num_tables + f) * dim;
    acc_t scale = acc_t(1);
    if (pooling == 1) scale = acc_t(1) / static_cast<acc_t>(offsets[bag + 1] - offsets[bag]);  // len >= 1 here
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const int d0 = (c * lpr + sub) * VEC;
      if (c < chunks && d0 < dim) {
        acc_t v[VEC];
        load_pack<scalar_t, acc_t, VEC>(src + d0, v);
#pragma unroll
        for (int k = 0; k < VEC; ++k) g[c][k] += v[k] * scale;
      }
    }
  }
  if (MODE == Mode::kRowGrad) {
    const int64_t out_row = run_id[i] - 1;
    if (sub == 0) unique_rows[out_row] = row;
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const int d0 = (c * lpr + sub) * VEC;
      if (c < chunks && d0 < dim) store_pack<acc_t, acc_t, VEC>(grads + out_row * dim + d0, g[c]);
    }
    return;
  }
  acc_t step = static_cast<acc_t>(lr);
  if (MODE == Mode::kAdagrad) {
    acc_t sq = acc_t(0);
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) sq += g[c][k] * g[c][k];  // unused columns hold 0
    }
    for (int o = lpr >> 1; o > 0; o >>= 1) sq += __shfl_xor_sync(mask, sq, o);  // the row's D columns
    const float s = old_state + static_cast<float>(sq / static_cast<acc_t>(dim));
    if (sub == 0) state[row] = s;
    step = static_cast<acc_t>(lr) / (static_cast<acc_t>(sqrtf(s)) + static_cast<acc_t>(eps));
  }
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) {
    const int d0 = (c * lpr + sub) * VEC;
    if (c < chunks && d0 < dim) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) wv[c][k] -= step * g[c][k];
      store_pack<scalar_t, acc_t, VEC>(w + d0, wv[c]);
    }
  }
}

// ------------------------------------------------------------------------------------------------ host side
struct Layout {
  at::Tensor table_offsets, indices, offsets;  // int64, contiguous
  int64_t num_tables, batch;
};

Layout check_layout(const char* op, const at::Tensor& data, const at::Tensor& table_offsets,
                    const at::Tensor& indices, const at::Tensor& offsets, int64_t pooling) {
  check_cuda_tensor(data, op, "weight/grad_output");
  check_same_device(data, table_offsets, op, "table_offsets");
  check_same_device(data, indices, op, "indices");
  check_same_device(data, offsets, op, "offsets");
  TORCH_CHECK(pooling == 0 || pooling == 1, op, ": pooling must be 0 (sum) or 1 (mean), got ", pooling);
  TORCH_CHECK(table_offsets.dim() == 1 && table_offsets.numel() >= 2, op,
              ": table_offsets must be (F + 1,) with F >= 1, got ", table_offsets.sizes());
  TORCH_CHECK(indices.dim() == 1 && offsets.dim() == 1, op, ": indices and offsets must be 1-D");
  for (const auto* t : {&table_offsets, &indices, &offsets}) {
    TORCH_CHECK(t->scalar_type() == at::kLong || t->scalar_type() == at::kInt, op,
                ": table_offsets/indices/offsets must be int32 or int64, got ", t->scalar_type());
  }
  const int64_t num_tables = table_offsets.numel() - 1;
  TORCH_CHECK(offsets.numel() >= 1 && (offsets.numel() - 1) % num_tables == 0, op,
              ": offsets must have F * B + 1 entries with F = ", num_tables, ", got ", offsets.numel());
  const int64_t batch = (offsets.numel() - 1) / num_tables;
  TORCH_CHECK(batch * num_tables < (int64_t(1) << 31), op, ": at most 2^31 bags, got ", batch * num_tables);
  return {table_offsets.to(at::kLong).contiguous(), indices.to(at::kLong).contiguous(),
          offsets.to(at::kLong).contiguous(), num_tables, batch};
}

int lanes_per_row(int64_t dim, int vec) {
  return std::min(kWarp, next_pow2(static_cast<int>((dim + vec - 1) / vec)));
}

at::Tensor forward_cuda(const at::Tensor& weight, const at::Tensor& table_offsets, const at::Tensor& indices,
                        const at::Tensor& offsets, int64_t pooling) {
  const char* op = "embedding_bag_forward";
  Layout lay = check_layout(op, weight, table_offsets, indices, offsets, pooling);
  TORCH_CHECK(weight.dim() == 2, op, ": weight must be (R, D), got ", weight.sizes());
  TORCH_CHECK(weight.is_contiguous(), op, ": weight must be contiguous");
  const c10::cuda::CUDAGuard guard(weight.device());
  const int64_t dim = weight.size(1);
  auto out = at::empty({lay.batch, lay.num_tables, dim}, weight.options());
  if (out.numel() == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "recpipe_tbe_forward", [&] {
    constexpr int kVec = 16 / sizeof(scalar_t);
    const bool wide = pick_vec<scalar_t>(dim, weight.data_ptr()) == kVec;
    auto go = [&](auto vec_tag) {
      constexpr int V = decltype(vec_tag)::value;
      const int lpr = lanes_per_row(dim, V);
      const unsigned blocks = blocks_for(lay.batch * lay.num_tables, kWarpsPerBlock * (kWarp / lpr));
      forward_kernel<scalar_t, V><<<blocks, kThreads, 0, stream>>>(
          weight.data_ptr<scalar_t>(), lay.table_offsets.data_ptr<int64_t>(), lay.indices.data_ptr<int64_t>(),
          lay.offsets.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), lay.batch, lay.num_tables, weight.size(0),
          static_cast<int>(dim), static_cast<int>(pooling), lpr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (wide) {
      go(std::integral_constant<int, kVec>{});
    } else {
      go(std::integral_constant<int, 1>{});
    }
  });
  return out;
}

// Sorted (row, bag) pairs of every index; rows use only the bits needed for `total_rows`.
std::tuple<at::Tensor, at::Tensor> sorted_rows_and_bags(const Layout& lay, int64_t total_rows) {
  const int64_t n = lay.indices.numel();
  auto opts = lay.indices.options();
  auto rows = at::empty({n}, opts);
  auto bags = at::empty({n}, opts.dtype(at::kInt));
  auto stream = c10::cuda::getCurrentCUDAStream();
  linearize_kernel<<<blocks_for(lay.batch * lay.num_tables, kWarpsPerBlock), kThreads, 0, stream>>>(
      lay.table_offsets.data_ptr<int64_t>(), lay.indices.data_ptr<int64_t>(), lay.offsets.data_ptr<int64_t>(),
      rows.data_ptr<int64_t>(), bags.data_ptr<int32_t>(), lay.batch, lay.num_tables, total_rows);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  int end_bit = 1;
  while (end_bit < 63 && (int64_t(1) << end_bit) < total_rows) ++end_bit;
  auto sorted_rows = at::empty_like(rows);
  auto sorted_bags = at::empty_like(bags);
  TORCH_CHECK(n <= INT32_MAX, "embedding_bag backward: at most 2^31 indices per call, got ", n);
  size_t temp_bytes = 0;
  C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, temp_bytes, rows.data_ptr<int64_t>(), sorted_rows.data_ptr<int64_t>(), bags.data_ptr<int32_t>(),
      sorted_bags.data_ptr<int32_t>(), static_cast<int>(n), 0, end_bit, stream));
  auto temp = at::empty({static_cast<int64_t>(temp_bytes)}, opts.dtype(at::kByte));
  C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      temp.data_ptr(), temp_bytes, rows.data_ptr<int64_t>(), sorted_rows.data_ptr<int64_t>(),
      bags.data_ptr<int32_t>(), sorted_bags.data_ptr<int32_t>(), static_cast<int>(n), 0, end_bit, stream));
  return {sorted_rows, sorted_bags};
}

template <Mode MODE>
void launch_segments(const char* op, const Layout& lay, const at::Tensor& sorted_rows, const at::Tensor& sorted_bags,
                     const at::Tensor& grad_output, int64_t pooling, const at::Tensor& run_id, at::Tensor unique_rows,
                     at::Tensor grads, at::Tensor weight, at::Tensor state, double lr, double eps) {
  const int64_t n = sorted_rows.numel();
  const int64_t dim = grad_output.size(2);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "recpipe_tbe_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const void* probe = weight.defined() ? weight.data_ptr() : grad_output.data_ptr();
    int vec = std::min(pick_vec<scalar_t>(dim, grad_output.data_ptr()), pick_vec<scalar_t>(dim, probe));
    constexpr int kVec = 16 / sizeof(scalar_t);
    if (vec != kVec) vec = 1;
    const int lpr = lanes_per_row(dim, vec);
    TORCH_CHECK(dim <= int64_t(kMaxChunks) * lpr * vec, op, ": D = ", dim, " is too large for this dtype/layout (at most ",
                kMaxChunks * lpr * vec, ")");
    const unsigned blocks = blocks_for(n, kWarpsPerBlock * (kWarp / lpr));
    auto go = [&](auto vec_tag, auto chunk_tag) {
      constexpr int V = decltype(vec_tag)::value;
      constexpr int C = decltype(chunk_tag)::value;
      segment_kernel<scalar_t, V, C, MODE><<<blocks, kThreads, 0, stream>>>(
          sorted_rows.data_ptr<int64_t>(), sorted_bags.data_ptr<int32_t>(), lay.offsets.data_ptr<int64_t>(),
          grad_output.data_ptr<scalar_t>(), n, lay.batch, lay.num_tables, static_cast<int>(dim),
          static_cast<int>(pooling), lpr, run_id.defined() ? run_id.data_ptr<int64_t>() : nullptr,
          unique_rows.defined() ? unique_rows.data_ptr<int64_t>() : nullptr,
          grads.defined() ? grads.data_ptr<acc_t>() : nullptr,
          weight.defined() ? weight.data_ptr<scalar_t>() : nullptr,
          state.defined() ? state.data_ptr<float>() : nullptr, static_cast<float>(lr), static_cast<float>(eps));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    using One = std::integral_constant<int, 1>;
    using Max = std::integral_constant<int, kMaxChunks>;
    const bool one_chunk = dim <= int64_t(lpr) * vec;
    if (vec == kVec) {
      if (one_chunk) go(std::integral_constant<int, kVec>{}, One{}); else go(std::integral_constant<int, kVec>{}, Max{});
    } else {
      if (one_chunk) go(One{}, One{}); else go(One{}, Max{});
    }
  });
}

void check_grad(const char* op, const at::Tensor& grad_output, const Layout& lay) {
  TORCH_CHECK(grad_output.dim() == 3 && grad_output.size(0) == lay.batch && grad_output.size(1) == lay.num_tables, op,
              ": grad_output must be (B=", lay.batch, ", F=", lay.num_tables, ", D), got ", grad_output.sizes());
}

std::tuple<at::Tensor, at::Tensor> row_grad_cuda(const at::Tensor& grad_output_in, const at::Tensor& table_offsets,
                                                 const at::Tensor& indices, const at::Tensor& offsets,
                                                 int64_t pooling) {
  const char* op = "embedding_bag_row_grad";
  Layout lay = check_layout(op, grad_output_in, table_offsets, indices, offsets, pooling);
  check_grad(op, grad_output_in, lay);
  const c10::cuda::CUDAGuard guard(grad_output_in.device());
  auto grad_output = grad_output_in.contiguous();
  const auto acc_type = grad_output.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t n = lay.indices.numel();
  const int64_t dim = grad_output.size(2);
  if (n == 0) {
    return {at::empty({0}, lay.indices.options()), at::empty({0, dim}, grad_output.options().dtype(acc_type))};
  }
  const int64_t total_rows = lay.table_offsets[-1].item<int64_t>();  // one sync; the row count sizes the sort
  auto [sorted_rows, sorted_bags] = sorted_rows_and_bags(lay, total_rows);
  auto head = at::empty_like(sorted_rows);
  auto stream = c10::cuda::getCurrentCUDAStream();
  run_heads_kernel<<<blocks_for(n, kThreads), kThreads, 0, stream>>>(sorted_rows.data_ptr<int64_t>(),
                                                                      head.data_ptr<int64_t>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto run_id = at::cumsum(head, 0);
  const int64_t unique = run_id[-1].item<int64_t>();  // output size is data-dependent
  auto unique_rows = at::empty({unique}, lay.indices.options());
  auto grads = at::empty({unique, dim}, grad_output.options().dtype(acc_type));
  if (dim > 0) {
    launch_segments<Mode::kRowGrad>(op, lay, sorted_rows, sorted_bags, grad_output, pooling, run_id, unique_rows,
                                    grads, at::Tensor(), at::Tensor(), 0.0, 0.0);
  } else {
    unique_rows.copy_(sorted_rows.masked_select(head.to(at::kBool)));
  }
  return {unique_rows, grads};
}

template <Mode MODE>
void fused_update(const char* op, at::Tensor weight, at::Tensor state, const at::Tensor& grad_output_in,
                  const at::Tensor& table_offsets, const at::Tensor& indices, const at::Tensor& offsets,
                  int64_t pooling, double lr, double eps) {
  Layout lay = check_layout(op, weight, table_offsets, indices, offsets, pooling);
  check_grad(op, grad_output_in, lay);
  check_same_device(weight, grad_output_in, op, "grad_output");
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous(), op, ": weight must be a contiguous (R, D) tensor");
  TORCH_CHECK(grad_output_in.size(2) == weight.size(1), op, ": grad_output D = ", grad_output_in.size(2),
              " but weight D = ", weight.size(1));
  if (MODE == Mode::kAdagrad) {
    check_same_device(weight, state, op, "state");
    TORCH_CHECK(state.scalar_type() == at::kFloat && state.dim() == 1 && state.size(0) == weight.size(0) &&
                    state.is_contiguous(),
                op, ": state must be a contiguous float32 (R,) tensor, got ", state.scalar_type(), " ", state.sizes());
  }
  const c10::cuda::CUDAGuard guard(weight.device());
  auto grad_output = grad_output_in.to(weight.scalar_type()).contiguous();
  if (lay.indices.numel() == 0 || weight.size(1) == 0) return;
  auto [sorted_rows, sorted_bags] = sorted_rows_and_bags(lay, weight.size(0));
  launch_segments<MODE>(op, lay, sorted_rows, sorted_bags, grad_output, pooling, at::Tensor(), at::Tensor(),
                        at::Tensor(), weight, state, lr, eps);
}

void sgd_cuda(at::Tensor weight, const at::Tensor& grad_output, const at::Tensor& table_offsets,
              const at::Tensor& indices, const at::Tensor& offsets, int64_t pooling, double lr) {
  fused_update<Mode::kSgd>("embedding_bag_backward_sgd_", weight, at::Tensor(), grad_output, table_offsets, indices,
                           offsets, pooling, lr, 0.0);
}

void adagrad_cuda(at::Tensor weight, at::Tensor state, const at::Tensor& grad_output, const at::Tensor& table_offsets,
                  const at::Tensor& indices, const at::Tensor& offsets, int64_t pooling, double lr, double eps) {
  fused_update<Mode::kAdagrad>("embedding_bag_backward_rowwise_adagrad_", weight, state, grad_output, table_offsets,
                               indices, offsets, pooling, lr, eps);
}

}  // namespace
}  // namespace recpipe

TORCH_LIBRARY_IMPL(recpipe, CUDA, m) {
  m.impl("embedding_bag_forward", &recpipe::forward_cuda);
  m.impl("embedding_bag_row_grad", &recpipe::row_grad_cuda);
  m.impl("embedding_bag_backward_sgd_", &recpipe::sgd_cuda);
  m.impl("embedding_bag_backward_rowwise_adagrad_", &recpipe::adagrad_cuda);
}
