// Key addressing of the swa_decode kernels (swa_decode.cu): which sink or ring-buffer row each key
// of a block's split reads, with the bad-data guard.  Torch-free, internal.
#pragma once

#include <cmath>
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

// What block (blockIdx.x = split, nh0 + blockIdx.y = n * HKV + hk, blockIdx.z = chunk of HEADS query heads)
// serves: sequence n, KV head hk, query heads h0 .. h0 + nheads of the KV head's G, and its keys.
template <typename T>
struct BlockWork {
  int64_t n;
  int hk, h0, nheads;
  SplitPlan<T> sp;
};

template <int HEADS, typename T>
__device__ __forceinline__ BlockWork<T> block_work(const T* kc, const T* vc, const SwaCacheStrides& cs,
                                                   const SwaSinks& sinks, const void* seq_lens, bool lens64,
                                                   const void* slots, bool slots64, int64_t num_slots, int64_t C,
                                                   int HKV, int G, int window, int nsplit, int64_t nh0) {
  BlockWork<T> b;
  const int64_t nh = nh0 + blockIdx.y;  // launched in slices of kMaxGridYZ
  b.n = nh / HKV;
  b.hk = static_cast<int>(nh % HKV);
  b.h0 = blockIdx.z * HEADS;
  b.nheads = min(HEADS, G - b.h0);
  const int64_t L = load_index(seq_lens, lens64, b.n);
  const int64_t slot = slots ? load_index(slots, slots64, b.n) : b.n;
  b.sp = plan_split(kc, vc, cs, static_cast<const T*>(sinks.k), static_cast<const T*>(sinks.v), sinks, L, slot,
                    num_slots, C, b.hk, window, nsplit, static_cast<int>(blockIdx.x));
  return b;
}

// One output element (head, d) of a block: o itself when the window is one split, else the split's
// (max, sum, acc) partial that swa_combine_kernel merges.  A bad slot writes NaN (partials that the
// combine turns into NaN).
template <typename T>
__device__ __forceinline__ void write_result(T* o, float* part, int64_t head, int d, int D, int nsplit, int split,
                                             float M, float Ls, float A, bool bad) {
  if (bad) {
    M = 0.f;
    Ls = 1.f;
    A = NAN;
  }
  if (nsplit == 1) {
    o[head * D + d] = from_float<T>(Ls > 0.f ? A / Ls : 0.f);
  } else {
    float* pp = part + (head * nsplit + split) * (D + 2);
    pp[2 + d] = A;
    if (d == 0) {
      pp[0] = M;
      pp[1] = Ls;
    }
  }
}

}  // namespace swa_decode_detail
}  // namespace sbops
