// Key addressing of the swa_decode kernels (swa_decode.cu): which sink or ring-buffer row each key
// of a block's split reads, with the bad-data guard.  Torch-free, internal.
#pragma once

#include <cstdint>

#include "common.cuh"
#include "decode.cuh"

namespace sbops {
namespace swa_decode_detail {

// Where the keys of one block's split live.  Virtual key jv of the (sequence, KV head) is sink jv
// (jv < M) or cache position lo + jv - M at ring row (lo + jv - M) % C.  `cb` is the split's first
// cache key and `rbase` its ring row; a split holds at most C cache keys, so one wrap suffices.
template <typename T>
struct KeyRows {
  const T* k;  // cache rows of (slot, KV head): ring row r at k + r * kr
  const T* v;
  int64_t kr, vr;
  const T* sk;  // sink rows of the KV head: sink j at sk + j * skr
  const T* sv;
  int64_t skr, svr;
  int64_t M, cb, rbase, C;

  __device__ __forceinline__ int64_t ring_row(int64_t jv) const {
    int64_t r = rbase + (jv - cb);
    if (r >= C) r -= C;
    return r;
  }
  __device__ __forceinline__ const T* key(int64_t jv) const { return jv < M ? sk + jv * skr : k + ring_row(jv) * kr; }
  __device__ __forceinline__ const T* val(int64_t jv) const { return jv < M ? sv + jv * svr : v + ring_row(jv) * vr; }
};

// The keys of split `split` of (sequence n, KV head hk): [a, a + cnt) of the virtual range, and
// where they live.  bad: the sequence's slot or length is invalid (then cnt = 0).
template <typename T>
struct SplitPlan {
  KeyRows<T> rows;
  int64_t a, cnt;
  bool bad;
};

template <typename T>
__device__ __forceinline__ SplitPlan<T> plan_split(const T* kc, const T* vc, const SwaCacheStrides& cs,
                                                   const T* sink_k, const T* sink_v, const SwaSinks& sinks,
                                                   int64_t L, int64_t slot, int64_t num_slots, int64_t C, int hk,
                                                   int window, int nsplit, int split) {
  SplitPlan<T> p;
  // Bad-data guard: a slot outside [0, num_slots) or a length < 1 reads nothing and yields NaN.
  p.bad = slot < 0 || slot >= num_slots || L < 1;
  // Positions before L - C were overwritten in the ring: never read more than C rows.
  int64_t lo = window < 0 ? 0 : max(static_cast<int64_t>(0), L - 1 - window);
  lo = max(lo, L - C);
  const int64_t M = sinks.M;
  const int64_t total = p.bad ? 0 : M + (L - lo);
  const int64_t chunk = ceil_div(total, nsplit);
  p.a = split * chunk;
  p.cnt = max(static_cast<int64_t>(0), min(total, p.a + chunk) - p.a);
  const int64_t s = p.bad ? 0 : slot;
  // caches [S, C, HKV, D]: k0 / v0 step slots, k1 / v1 ring rows, k2 / v2 KV heads (decode.cuh)
  p.rows.k = kc + s * cs.k0 + hk * cs.k2;
  p.rows.v = vc + s * cs.v0 + hk * cs.v2;
  p.rows.kr = cs.k1;
  p.rows.vr = cs.v1;
  p.rows.sk = sink_k + hk * sinks.k1;
  p.rows.sv = sink_v + hk * sinks.v1;
  p.rows.skr = sinks.k0;
  p.rows.svr = sinks.v0;
  p.rows.M = M;
  p.rows.C = C;
  p.rows.cb = max(p.a, M);
  p.rows.rbase = p.bad ? 0 : (lo + p.rows.cb - M) % C;
  return p;
}

}  // namespace swa_decode_detail
}  // namespace sbops
