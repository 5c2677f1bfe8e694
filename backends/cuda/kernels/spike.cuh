// Launchers for the spike-coding kernels (spike.cu).  Torch-free: raw pointers, sizes, a stream.
// "rows x cols" views put the reduced (channel) dimension last.  encode / quant read x's rows
// through a row stride xs (elements; rows are contiguous): views whose outer dimensions collapse to
// one stride (x[:, t], a split of a fused projection) are read in place.  Other tensors are dense.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "sbops/launch.cuh"

namespace sbops {

// Spike-train modes, in the order the bindings map the strings "binary", "ternary", "bitwise".
enum class SpikeMode : int { Binary = 0, Ternary = 1, Bitwise = 2 };

// vth[r] = clamp(mean|x[r,:]| / k, 1e-5, 1e4); counts[r,c] = saturate(rint(x[r,c] / vth[r])).
// x: F32/F16/BF16; counts: I8/I16/I32.  One read of x.
cudaError_t launch_spike_encode(const void* x, int64_t xs, DType x_dtype, void* counts, DType counts_dtype,
                                float* vth, int64_t rows, int64_t cols, float k, cudaStream_t stream);

// x_hat[r,c] = rint(x[r,c] / vth[r]) * vth[r] in x's dtype (no saturation).
cudaError_t launch_spike_quant(const void* x, int64_t xs, DType x_dtype, void* x_hat, int64_t rows,
                               int64_t cols, float k, cudaStream_t stream);

// trains[t, i] (int8, [T, n]) from counts[i] (I8/I16/I32/I64).  Counts must be representable
// in T steps (the caller checks; the kernel never writes outside trains).
cudaError_t launch_spike_expand(const void* counts, DType counts_dtype, int8_t* trains, int64_t n,
                                SpikeMode mode, int T, cudaStream_t stream);

// counts[i] (int32) = sum_t s[t,i] (binary/ternary) or sum_t 2^(T-1-t) s[t,i] (bitwise).
cudaError_t launch_spike_collapse(const void* trains, DType trains_dtype, int32_t* counts,
                                  int64_t n, int T, SpikeMode mode, cudaStream_t stream);

// hist[a] (int64, [max_abs + 1], zeroed here) counts the |counts[i]| == a.  Values above
// max_abs are not counted (the caller checks them beforehand).
cudaError_t launch_spike_hist(const void* counts, DType counts_dtype, int64_t* hist, int64_t n,
                              int64_t max_abs, cudaStream_t stream);

}  // namespace sbops
