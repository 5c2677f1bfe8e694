// The SwiGLU epilogue of the Hopper int8 GEMM (int8_gemm_sm90.cu, kSw): included by that file only, inside its
// namespace, after pack_out / bias_at and the tile constants, so that the kernel file stays a readable size.
#pragma once

// SwiGLU's gate / up projection with h = silu(g) * u in the epilogue (kSw, session 40): an item's B tile holds the
// 128 gate rows n0 .. n0 + 127 (accumulator blocks j = 0 .. 15) and the 128 up rows half_n + n0 .. of the same
// features (blocks j + 16), so a thread holds both factors of its outputs; h [M, half_n] goes out as in the kTs
// epilogue, two 64 x 64 chunks per warpgroup.  The rows of a 16-row block (a warp's) with counts past 127
// (row_flags[block] > 0) also write g and u, scaled, to side [M, 2 half_n]: the caller adds the counts past the int8
// plane there and redoes h for those rows.  With row_sums, each row's sum of |h| over the tile's 128 columns, as
// stored (rounded), goes to row_sums[row * ld_sums + n0 / 128]: a thread's 32 values, then the 4 lanes of its rows.
template <typename T>
struct SwigluArgs {
  const int* row_flags;  // [ceil(M / 16)] flagged K chunks per 16-row block, or nullptr
  T* side;               // [M, 2 half_n], row stride ld_side; only flagged blocks' rows are written
  int64_t ld_side;
  int half_n;            // I, a multiple of 128: the up rows start there; h has I columns
  float* row_sums;       // [M, ld_sums] float32 (ld_sums >= I / 128), or nullptr
  int64_t ld_sums;
};

#ifdef SBOPS_SM90A_DEVICE
// |lo| + |hi| of a pair of T values packed in 32 bits (pack_out's layout: lo in the low half)
template <typename T>
__device__ __forceinline__ float abs_pair_sum(uint32_t p) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    return fabsf(__uint_as_float(p << 16)) + fabsf(__uint_as_float(p & 0xffff0000u));
  } else {
    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&p));
    return fabsf(f.x) + fabsf(f.y);
  }
}

// col_par(j): the (scale, bias) of tile columns 8 j + 2 t4 and + 1 as (s0, b0, s1, b1), the up rows' from j = 16
template <typename T, typename Out, typename ColPar>
__device__ __forceinline__ void swiglu_epilogue(const uint32_t (&acc)[128], const Out& out, const ColPar& col_par,
                                                const SwigluArgs<T>& sw, int M, int m0, int n0, int wg, float v0,
                                                float v1, uint32_t s_epi, const CUtensorMap* tm_y) {
  const int tid = threadIdx.x, lane = tid & 31, w = (tid >> 5) & 3, g = lane >> 2, t4 = lane & 3;
  const int rb = m0 + 64 * wg + 16 * w;  // the warp's 16-row block: rows rb + g and rb + g + 8
  const int r0 = rb + g, r1 = r0 + 8;
  const bool flagged = sw.row_flags != nullptr && rb < M && sw.row_flags[rb / 16] > 0;
  // silu(g) * u with the fast exponential and division (as Triton's silu_mul compiles: ex2.approx, div.full), not
  // an IEEE division: the 7B gate / up GEMM at M = 16384 took 3.66 ms a call with it, 3.16 without (H100, session
  // 40, the model's kernel profile; the plain GEMM writing [g | u] 3.40)
  auto silu_mul = [](float gv, float uv) { return __fdividef(gv, 1.f + __expf(-gv)) * uv; };
  auto side_store = [&](int r, int col, float lo, float hi) {
    *reinterpret_cast<uint32_t*>(sw.side + static_cast<int64_t>(r) * sw.ld_side + col) = pack_out<T>(lo, hi);
  };
  float sum0 = 0.f, sum1 = 0.f;  // rows r0, r1: |h| of this thread's columns (used only with row_sums)
  // h's 128 columns as two chunks (tma_store_chunks)
  tma_store_chunks<kBN / 2 / kEpiCols>(s_epi, wg, m0, n0, tm_y, [&](int j) {
    const int ju = j + 16;  // the gate's block j, the up's
    const int col = n0 + 8 * j + 2 * t4, ucol = sw.half_n + col;
    const float4 pg = col_par(j), pu = col_par(ju);  // (s0, b0, s1, b1)
    const float g00 = out(acc[4 * j], pg.x, v0, pg.y), g01 = out(acc[4 * j + 1], pg.z, v0, pg.w);
    const float g10 = out(acc[4 * j + 2], pg.x, v1, pg.y), g11 = out(acc[4 * j + 3], pg.z, v1, pg.w);
    const float u00 = out(acc[4 * ju], pu.x, v0, pu.y), u01 = out(acc[4 * ju + 1], pu.z, v0, pu.w);
    const float u10 = out(acc[4 * ju + 2], pu.x, v1, pu.y), u11 = out(acc[4 * ju + 3], pu.z, v1, pu.w);
    if (flagged) {
      if (r0 < M) side_store(r0, col, g00, g01), side_store(r0, ucol, u00, u01);
      if (r1 < M) side_store(r1, col, g10, g11), side_store(r1, ucol, u10, u11);
    }
    const uint2 h = make_uint2(pack_out<T>(silu_mul(g00, u00), silu_mul(g01, u01)),
                               pack_out<T>(silu_mul(g10, u10), silu_mul(g11, u11)));
    if (sw.row_sums != nullptr) sum0 += abs_pair_sum<T>(h.x), sum1 += abs_pair_sum<T>(h.y);
    return h;
  });
  if (sw.row_sums != nullptr) {
    sum0 += shfl_xor(sum0, 1);
    sum0 += shfl_xor(sum0, 2);
    sum1 += shfl_xor(sum1, 1);
    sum1 += shfl_xor(sum1, 2);
    const int64_t c = n0 / (kBN / 2);  // the tile's index along h's columns
    if (t4 == 0 && r0 < M) sw.row_sums[static_cast<int64_t>(r0) * sw.ld_sums + c] = sum0;
    if (t4 == 0 && r1 < M) sw.row_sums[static_cast<int64_t>(r1) * sw.ld_sums + c] = sum1;
  }
}
#endif  // SBOPS_SM90A_DEVICE
