// The spike count of x: vth = clamp(mean|x| / k, 1e-5, 1e4) of a row (IEEE divisions, in the contract's order)
// and rint(x / vth) with x / vth correctly rounded.  Shared by the spike-coding kernels (spike.cu) and
// spike_linear's decode kernel (spike_decode.cu).  Torch-free.
#pragma once

#include <cuda_runtime.h>

namespace sbops {

// vth of a row from the sum of its |x| over `cols` elements: the mean, then / k, then the clamp.
__device__ __forceinline__ float spike_threshold(float sum_abs, float cols, float k) {
  const float t = __fdiv_rn(__fdiv_rn(sum_abs, cols), k);
  return fminf(fmaxf(t, 1e-5f), 1e4f);
}

// x / t correctly rounded (what IEEE division gives) from r = RN(1/t), without a division per
// element: q0 = x*r is within an ulp or so; the FMA residual x - q0*t is exact, and one
// Newton/Markstein step q0 + residual*r rounds to RN(x/t).  (Checked bit for bit against x / t
// on 2e8 host samples, including t with an all-ones significand and x on exact .5 ties; see
// NOTES_cuda_ops.md.)  A non-finite q0 (x = +-inf, NaN) is passed through unchanged.
__device__ __forceinline__ float quotient_rn(float x, float t, float r) {
  const float q0 = __fmul_rn(x, r);
  const float res = __fmaf_rn(-q0, t, x);
  const float q1 = __fmaf_rn(res, r, q0);
  return isfinite(q0) ? q1 : q0;
}

}  // namespace sbops
