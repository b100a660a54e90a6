// Shared device helpers of the recpipe CUDA kernels: vector packs, warp reductions, argument checks.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace recpipe {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// N consecutive elements of T read or written with one (up to 16-byte) memory instruction.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename T, typename A, int N>
__device__ __forceinline__ void load_pack(const T* __restrict__ p, A (&out)[N]) {
  const Pack<T, N> pk = *reinterpret_cast<const Pack<T, N>*>(p);
#pragma unroll
  for (int k = 0; k < N; ++k) out[k] = static_cast<A>(pk.v[k]);
}

template <typename T, typename A, int N>
__device__ __forceinline__ void store_pack(T* __restrict__ p, const A (&in)[N]) {
  Pack<T, N> pk;
#pragma unroll
  for (int k = 0; k < N; ++k) pk.v[k] = static_cast<T>(in[k]);
  *reinterpret_cast<Pack<T, N>*>(p) = pk;
}

// Sum over lanes that differ in the bits of [first, 32): lanes with equal (lane % first) end up equal.
template <typename A>
__device__ __forceinline__ A warp_sum_from(A v, int first) {
  for (int o = first; o < kWarp; o <<= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

inline int next_pow2(int x) {
  int p = 1;
  while (p < x) p <<= 1;
  return p;
}

// Elements per 16-byte access that divide `dim` and keep every row start aligned (1 when none does).
template <typename T>
inline int pick_vec(int64_t dim, const void* base) {
  int vec = static_cast<int>(16 / sizeof(T));
  while (vec > 1 && (dim % vec != 0 || reinterpret_cast<uintptr_t>(base) % (vec * sizeof(T)) != 0)) vec >>= 1;
  return vec;
}

inline void check_cuda_tensor(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got ", t.device());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op, const char* name) {
  TORCH_CHECK(a.device() == b.device(), op, ": ", name, " is on ", b.device(), " but the data is on ", a.device());
}

inline unsigned blocks_for(int64_t items, int per_block) {
  const int64_t blocks = (items + per_block - 1) / per_block;
  TORCH_CHECK(blocks <= 0x7fffffff, "recpipe: launch too large (", items, " work items)");
  return static_cast<unsigned>(blocks);
}

}  // namespace recpipe
