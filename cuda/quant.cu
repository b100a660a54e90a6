// CUDA kernels of the row-wise quantization ops defined in ops/quant.py (m.impl only); that file's module
// docstring is the spec: fused rows [packed codes | scale | bias], no padding; 8 bit: fp32 scale/bias;
// 4 / 2 bit: fp16 scale/bias; code = rint((x - b) / s) by true division, clamped to [0, 2^bits - 1].
//
// quantize_rowwise / quantize_rowwise_greedy: one warp per row (min-max = the greedy search with 0 steps).
// dequantize_rowwise: one thread per output element.
// quantized_embedding_bag: a lane reads one 4-byte word of packed codes (8 int4 codes) of a row; a group of
// lanes covering one row pools one bag, four rows in flight.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include "common.h"

namespace recpipe {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / kWarp;

__host__ __device__ constexpr int code_bytes(int dim, int bits) { return (dim * bits + 7) / 8; }
__host__ __device__ constexpr int sb_bytes(int bits) { return bits == 8 ? 8 : 4; }

// Stored (scale, bias) of a clipping range, as float32 values equal to the stored ones.
template <int BITS>
__device__ __forceinline__ void row_params(float lo, float hi, float& scale, float& bias) {
  constexpr float kQmax = static_cast<float>((1 << BITS) - 1);
  if (BITS == 8) {
    bias = lo;
    scale = __fdiv_rn(fmaxf(__fsub_rn(hi, lo), 0.f), kQmax);
  } else {
    bias = __half2float(__float2half_rn(lo));
    scale = __half2float(__float2half_rn(__fdiv_rn(fmaxf(__fsub_rn(hi, bias), 0.f), kQmax)));
  }
}

template <int BITS>
__device__ __forceinline__ float encode(float x, float scale, float bias) {
  constexpr float kQmax = static_cast<float>((1 << BITS) - 1);
  if (!(scale > 0.f)) return 0.f;
  return fminf(fmaxf(rintf(__fdiv_rn(__fsub_rn(x, bias), scale)), 0.f), kQmax);
}

template <int N>
__device__ __forceinline__ uint32_t load_le(const uint8_t* p) {
  uint32_t v = 0;
#pragma unroll
  for (int k = 0; k < N; ++k) v |= static_cast<uint32_t>(p[k]) << (8 * k);
  return v;
}

__device__ __forceinline__ float decode(float code, float scale, float bias) {
  return __fadd_rn(__fmul_rn(code, scale), bias);  // no FMA contraction: the reference rounds twice
}

// Warp-wide L2 error of quantizing row x (dim values) with range [lo, hi]; equal in every lane.
template <int BITS>
__device__ float range_error(const float* __restrict__ x, int dim, float lo, float hi, int lane) {
  float scale, bias;
  row_params<BITS>(lo, hi, scale, bias);
  float err = 0.f;
  for (int d = lane; d < dim; d += kWarp) {
    const float v = x[d];
    const float e = __fsub_rn(v, decode(encode<BITS>(v, scale, bias), scale, bias));
    err = __fadd_rn(err, __fmul_rn(e, e));
  }
  return warp_sum_from(err, 1);
}

template <int BITS>
__global__ void __launch_bounds__(kThreads) quantize_kernel(const float* __restrict__ w, uint8_t* __restrict__ out,
                                                            int64_t num_rows, int dim, int num_bins, int steps) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (r >= num_rows) return;  // warp-uniform
  const int lane = threadIdx.x % kWarp;
  const float* x = w + r * dim;
  float lo0 = INFINITY, hi0 = -INFINITY;
  for (int d = lane; d < dim; d += kWarp) {
    lo0 = fminf(lo0, x[d]);
    hi0 = fmaxf(hi0, x[d]);
  }
  for (int o = 1; o < kWarp; o <<= 1) {
    lo0 = fminf(lo0, __shfl_xor_sync(kFullMask, lo0, o));
    hi0 = fmaxf(hi0, __shfl_xor_sync(kFullMask, hi0, o));
  }
  float best_lo = lo0, best_hi = hi0;
  if (steps > 0) {
    const float step = __fdiv_rn(__fsub_rn(hi0, lo0), static_cast<float>(num_bins));
    float best_err = range_error<BITS>(x, dim, lo0, hi0, lane);
    float a = 0.f, c = 0.f;  // left / right shrink counts (small integers, exact)
    for (int it = 0; it < steps; ++it) {
      const float lo_cur = __fadd_rn(lo0, __fmul_rn(a, step));
      const float hi_cur = __fsub_rn(hi0, __fmul_rn(c, step));
      const float lo_left = __fadd_rn(lo0, __fmul_rn(a + 1.f, step));
      const float hi_right = __fsub_rn(hi0, __fmul_rn(c + 1.f, step));
      const float err_left = range_error<BITS>(x, dim, lo_left, hi_cur, lane);
      const float err_right = range_error<BITS>(x, dim, lo_cur, hi_right, lane);
      const bool go_left = err_left < err_right;
      if (go_left) a += 1.f; else c += 1.f;
      const float err = go_left ? err_left : err_right;
      if (err < best_err) {
        best_err = err;
        best_lo = __fadd_rn(lo0, __fmul_rn(a, step));
        best_hi = __fsub_rn(hi0, __fmul_rn(c, step));
      }
    }
  }
  float scale, bias;
  row_params<BITS>(best_lo, best_hi, scale, bias);
  // scale then bias, little-endian, as one 64-bit word; every byte of the row is written from a 32/64-bit
  // register (nvcc 13.0 stored wrong low bytes when a byte store took a 16-bit register straight from a
  // float -> half conversion, seen on an H100 2026-11-24)
  uint64_t sb;
  if (BITS == 8) {
    sb = static_cast<uint64_t>(__float_as_uint(scale)) | (static_cast<uint64_t>(__float_as_uint(bias)) << 32);
  } else {
    const uint32_t hs = __half_as_ushort(__float2half_rn(scale));
    const uint32_t hb = __half_as_ushort(__float2half_rn(bias));
    sb = static_cast<uint64_t>(hs | (hb << 16));
  }
  constexpr int kPerByte = 8 / BITS;
  const int cbytes = code_bytes(dim, BITS);
  const int width = cbytes + sb_bytes(BITS);
  uint8_t* dst = out + r * width;
  for (int j = lane; j < width; j += kWarp) {
    uint32_t byte = 0;
    if (j < cbytes) {
#pragma unroll
      for (int k = 0; k < kPerByte; ++k) {
        const int d = j * kPerByte + k;
        if (d < dim) byte |= static_cast<uint32_t>(encode<BITS>(x[d], scale, bias)) << (k * BITS);
      }
    } else {
      byte = static_cast<uint32_t>(sb >> (8 * (j - cbytes))) & 0xffu;
    }
    dst[j] = static_cast<uint8_t>(byte);
  }
}

// Scale and bias of a fused row; ALIGNED: the scale/bias bytes start on a 4-byte boundary.
template <int BITS, bool ALIGNED>
__device__ __forceinline__ void read_params(const uint8_t* __restrict__ row, int cbytes, float& scale, float& bias) {
  if (BITS == 8) {
    if (ALIGNED) {
      scale = __uint_as_float(*reinterpret_cast<const uint32_t*>(row + cbytes));
      bias = __uint_as_float(*reinterpret_cast<const uint32_t*>(row + cbytes + 4));
    } else {
      scale = __uint_as_float(load_le<4>(row + cbytes));
      bias = __uint_as_float(load_le<4>(row + cbytes + 4));
    }
  } else {
    const uint32_t sb = ALIGNED ? *reinterpret_cast<const uint32_t*>(row + cbytes) : load_le<4>(row + cbytes);
    scale = __half2float(__ushort_as_half(static_cast<unsigned short>(sb & 0xffffu)));
    bias = __half2float(__ushort_as_half(static_cast<unsigned short>(sb >> 16)));
  }
}

template <int BITS>
__global__ void dequantize_kernel(const uint8_t* __restrict__ fused, float* __restrict__ out, int64_t num_rows,
                                  int dim) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= num_rows * dim) return;
  const int64_t r = e / dim;
  const int d = static_cast<int>(e - r * dim);
  constexpr int kPerByte = 8 / BITS;
  const int cbytes = code_bytes(dim, BITS);
  const uint8_t* row = fused + r * (cbytes + sb_bytes(BITS));
  float scale, bias;
  read_params<BITS, false>(row, cbytes, scale, bias);
  const unsigned code = (row[d / kPerByte] >> ((d % kPerByte) * BITS)) & ((1u << BITS) - 1);
  out[e] = decode(static_cast<float>(code), scale, bias);
}

// The packed codes word (WORD bytes at byte0), scale and bias of one fused row, scaled by a sample weight.
template <int BITS, int WORD>
struct RowSlice {
  uint32_t word;
  float scale, bias;

  __device__ __forceinline__ void load(const uint8_t* __restrict__ row, int byte0, int cbytes, float weight) {
    word = WORD == 4 ? *reinterpret_cast<const uint32_t*>(row + byte0) : row[byte0];
    read_params<BITS, WORD == 4>(row, cbytes, scale, bias);
    scale *= weight;
    bias *= weight;
  }

  template <int ELEMS>
  __device__ __forceinline__ void add_to(float (&acc)[ELEMS]) const {
#pragma unroll
    for (int k = 0; k < ELEMS; ++k) {
      acc[k] += fmaf(static_cast<float>((word >> (k * BITS)) & ((1u << BITS) - 1)), scale, bias);
    }
  }
};

// WORD = bytes of packed codes a lane reads at once (4, or 1 when rows are not 4-byte aligned); a lane owns
// ELEMS = WORD * 8 / BITS consecutive columns of each chunk. A group of LPR lanes pools one bag (a warp pools
// 32 / LPR consecutive bags), kUnrollQ rows in flight, added in index order.
constexpr int kUnrollQ = 4;

template <int BITS, int WORD>
__global__ void __launch_bounds__(kThreads) qbag_kernel(
    const uint8_t* __restrict__ fused, const int64_t* __restrict__ indices, const int64_t* __restrict__ offsets,
    const float* __restrict__ psw, float* __restrict__ out, int64_t num_bags, int64_t num_rows, int dim, int mode,
    int lpr) {
  constexpr int kPerByte = 8 / BITS;
  constexpr int kElems = WORD * kPerByte;
  const int lane = threadIdx.x % kWarp;
  const int sub = lane % lpr;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int64_t bag = warp * (kWarp / lpr) + lane / lpr;
  if (bag >= num_bags) return;  // no shuffles below
  const int cbytes = code_bytes(dim, BITS);
  const int64_t width = cbytes + sb_bytes(BITS);
  const int64_t start = offsets[bag];
  const int64_t end = offsets[bag + 1];
  const float inv_len = (mode == 1 && end > start) ? 1.f / static_cast<float>(end - start) : 1.f;
  for (int byte0 = sub * WORD; byte0 < cbytes; byte0 += lpr * WORD) {
    float acc[kElems];
#pragma unroll
    for (int k = 0; k < kElems; ++k) acc[k] = 0.f;
    int64_t p = start;
    for (; p + kUnrollQ <= end; p += kUnrollQ) {
      RowSlice<BITS, WORD> rs[kUnrollQ];
#pragma unroll
      for (int u = 0; u < kUnrollQ; ++u) {
        const int64_t idx = indices[p + u];
        CUDA_KERNEL_ASSERT(idx >= 0 && idx < num_rows);
        rs[u].load(fused + idx * width, byte0, cbytes, psw != nullptr ? psw[p + u] : 1.f);
      }
#pragma unroll
      for (int u = 0; u < kUnrollQ; ++u) rs[u].add_to(acc);
    }
    for (; p < end; ++p) {
      const int64_t idx = indices[p];
      CUDA_KERNEL_ASSERT(idx >= 0 && idx < num_rows);
      RowSlice<BITS, WORD> rs;
      rs.load(fused + idx * width, byte0, cbytes, psw != nullptr ? psw[p] : 1.f);
      rs.add_to(acc);
    }
    float* dst = out + bag * dim + byte0 * kPerByte;
    const int valid = min(kElems, dim - byte0 * kPerByte);
    if (valid == kElems && kElems % 4 == 0 && (reinterpret_cast<uintptr_t>(dst) % 16) == 0) {
#pragma unroll
      for (int k = 0; k < kElems; k += 4) {
        *reinterpret_cast<float4*>(dst + k) =
            make_float4(acc[k] * inv_len, acc[k + 1] * inv_len, acc[k + 2] * inv_len, acc[k + 3] * inv_len);
      }
    } else {
#pragma unroll
      for (int k = 0; k < kElems; ++k) {
        if (k < valid) dst[k] = acc[k] * inv_len;
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------ host side
void check_bits_dim(const char* op, int64_t bits, int64_t dim) {
  TORCH_CHECK(bits == 2 || bits == 4 || bits == 8, op, ": bits must be 2, 4 or 8, got ", bits);
  TORCH_CHECK(dim >= 1 && dim <= INT32_MAX / 8, op, ": embedding dim must be >= 1, got ", dim);
}

void check_fused(const char* op, const at::Tensor& fused, int64_t bits, int64_t dim) {
  check_cuda_tensor(fused, op, "fused");
  check_bits_dim(op, bits, dim);
  const int64_t want = code_bytes(static_cast<int>(dim), static_cast<int>(bits)) + sb_bytes(static_cast<int>(bits));
  TORCH_CHECK(fused.dim() == 2 && fused.scalar_type() == at::kByte && fused.size(1) == want, op,
              ": fused must be (R, ", want, ") uint8 for ", bits, "-bit rows of dim ", dim, ", got ",
              fused.scalar_type(), " ", fused.sizes());
}

template <typename Fn>
void dispatch_bits(int64_t bits, Fn&& fn) {
  if (bits == 8) {
    fn(std::integral_constant<int, 8>{});
  } else if (bits == 4) {
    fn(std::integral_constant<int, 4>{});
  } else {
    fn(std::integral_constant<int, 2>{});
  }
}

at::Tensor quantize_impl(const char* op, const at::Tensor& w_in, int64_t bits, int64_t num_bins, int64_t steps) {
  check_cuda_tensor(w_in, op, "w");
  TORCH_CHECK(w_in.dim() == 2 && w_in.scalar_type() == at::kFloat, op, ": w must be a (R, D) float32 table, got ",
              w_in.scalar_type(), " ", w_in.sizes());
  check_bits_dim(op, bits, w_in.size(1));
  const c10::cuda::CUDAGuard guard(w_in.device());
  auto w = w_in.contiguous();
  const int dim = static_cast<int>(w.size(1));
  const int64_t rows = w.size(0);
  auto out = at::empty({rows, code_bytes(dim, static_cast<int>(bits)) + sb_bytes(static_cast<int>(bits))},
                       w.options().dtype(at::kByte));
  if (rows == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_bits(bits, [&](auto bits_tag) {
    constexpr int BITS = decltype(bits_tag)::value;
    quantize_kernel<BITS><<<blocks_for(rows, kWarpsPerBlock), kThreads, 0, stream>>>(
        w.data_ptr<float>(), out.data_ptr<uint8_t>(), rows, dim, static_cast<int>(num_bins),
        static_cast<int>(steps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor quantize_rowwise_cuda(const at::Tensor& w, int64_t bits) {
  return quantize_impl("quantize_rowwise", w, bits, 1, 0);
}

at::Tensor quantize_rowwise_greedy_cuda(const at::Tensor& w, int64_t bits, int64_t num_bins, double ratio) {
  const char* op = "quantize_rowwise_greedy";
  TORCH_CHECK(num_bins >= 1, op, ": num_bins must be >= 1, got ", num_bins);
  TORCH_CHECK(ratio >= 0.0 && ratio <= 1.0, op, ": ratio must be in [0, 1], got ", ratio);
  // Python's round(): half to even, as the reference's int(round(num_bins * ratio)).
  const int64_t steps = static_cast<int64_t>(std::nearbyint(static_cast<double>(num_bins) * ratio));
  return quantize_impl(op, w, bits, num_bins, steps);
}

at::Tensor dequantize_rowwise_cuda(const at::Tensor& fused_in, int64_t bits, int64_t dim) {
  check_fused("dequantize_rowwise", fused_in, bits, dim);
  const c10::cuda::CUDAGuard guard(fused_in.device());
  auto fused = fused_in.contiguous();
  const int64_t rows = fused.size(0);
  auto out = at::empty({rows, dim}, fused.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_bits(bits, [&](auto bits_tag) {
    constexpr int BITS = decltype(bits_tag)::value;
    dequantize_kernel<BITS><<<blocks_for(rows * dim, kThreads), kThreads, 0, stream>>>(
        fused.data_ptr<uint8_t>(), out.data_ptr<float>(), rows, static_cast<int>(dim));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor quantized_embedding_bag_cuda(const at::Tensor& fused_in, int64_t bits, int64_t dim,
                                        const at::Tensor& indices_in, const at::Tensor& offsets_in, int64_t mode,
                                        const std::optional<at::Tensor>& psw_in) {
  const char* op = "quantized_embedding_bag";
  check_fused(op, fused_in, bits, dim);
  check_same_device(fused_in, indices_in, op, "indices");
  check_same_device(fused_in, offsets_in, op, "offsets");
  TORCH_CHECK(mode == 0 || mode == 1, op, ": mode must be 0 (sum) or 1 (mean), got ", mode);
  for (const auto* t : {&indices_in, &offsets_in}) {
    TORCH_CHECK(t->dim() == 1 && (t->scalar_type() == at::kLong || t->scalar_type() == at::kInt), op,
                ": indices/offsets must be 1-D int32/int64, got ", t->scalar_type(), " ", t->sizes());
  }
  TORCH_CHECK(offsets_in.numel() >= 1, op, ": offsets must have B + 1 >= 1 entries");
  at::Tensor psw;
  if (psw_in.has_value() && psw_in->defined()) {
    TORCH_CHECK(mode == 0, op, ": per_sample_weights are only supported with mode 0 (sum)");
    check_same_device(fused_in, *psw_in, op, "per_sample_weights");
    TORCH_CHECK(psw_in->scalar_type() == at::kFloat && psw_in->sizes() == indices_in.sizes(), op,
                ": per_sample_weights must be float32 of shape ", indices_in.sizes(), ", got ",
                psw_in->scalar_type(), " ", psw_in->sizes());
    psw = psw_in->contiguous();
  }
  const c10::cuda::CUDAGuard guard(fused_in.device());
  auto fused = fused_in.contiguous();
  auto indices = indices_in.to(at::kLong).contiguous();
  auto offsets = offsets_in.to(at::kLong).contiguous();
  const int64_t num_bags = offsets.numel() - 1;
  auto out = at::empty({num_bags, dim}, fused.options().dtype(at::kFloat));
  if (num_bags == 0) return out;
  const int cbytes = code_bytes(static_cast<int>(dim), static_cast<int>(bits));
  const int width = cbytes + sb_bytes(static_cast<int>(bits));
  const bool aligned = width % 4 == 0 && cbytes % 4 == 0 && reinterpret_cast<uintptr_t>(fused.data_ptr()) % 4 == 0;
  auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_bits(bits, [&](auto bits_tag) {
    constexpr int BITS = decltype(bits_tag)::value;
    auto go = [&](auto word_tag) {
      constexpr int WORD = decltype(word_tag)::value;
      const int lpr = std::min(kWarp, next_pow2((cbytes + WORD - 1) / WORD));
      qbag_kernel<BITS, WORD><<<blocks_for(num_bags, kWarpsPerBlock * (kWarp / lpr)), kThreads, 0, stream>>>(
          fused.data_ptr<uint8_t>(), indices.data_ptr<int64_t>(), offsets.data_ptr<int64_t>(),
          psw.defined() ? psw.data_ptr<float>() : nullptr, out.data_ptr<float>(), num_bags, fused.size(0),
          static_cast<int>(dim), static_cast<int>(mode), lpr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (aligned) {
      go(std::integral_constant<int, 4>{});
    } else {
      go(std::integral_constant<int, 1>{});
    }
  });
  return out;
}

}  // namespace
}  // namespace recpipe

TORCH_LIBRARY_IMPL(recpipe, CUDA, m) {
  m.impl("quantize_rowwise", &recpipe::quantize_rowwise_cuda);
  m.impl("quantize_rowwise_greedy", &recpipe::quantize_rowwise_greedy_cuda);
  m.impl("dequantize_rowwise", &recpipe::dequantize_rowwise_cuda);
  m.impl("quantized_embedding_bag", &recpipe::quantized_embedding_bag_cuda);
}
