"""The 7B model's decode (sbops.bench.model) with the dense decode GEMV routed up to ROWS rows of x and, past 16 rows,
a forced block layout: the A/B behind sbops.nn.common.DENSE_DECODE_MAX_ROWS and the kernel's default layout for
17-32 rows.  LAYOUT -1 keeps the kernel's default.  CACHE: seq (the SWA caches [S, C, HKV, D] in memory) or hm
(head-major, sbops.nn.cache.SWA_CACHE_HEAD_MAJOR); default: as shipped.
usage: python benchmarks/gpu/probes/dense_decode_rows_model.py ROWS LAYOUT [CACHE] [sbops.bench.model arguments ...]"""
import sys

import torch

from sbops.bench import model as bench_model
from sbops.nn import cache, common


def main():
    rows, layout = int(sys.argv[1]), int(sys.argv[2])
    rest = sys.argv[3:]
    if rest and rest[0] in ("seq", "hm"):
        cache.SWA_CACHE_HEAD_MAJOR = rest.pop(0) == "hm"
    common.DENSE_DECODE_MAX_ROWS = rows
    op = torch.ops.sbops_native.dense_decode

    def forced(x, w, b):
        return op(x, w, b, layout if x.shape[0] > 16 else -1)

    common._dense_op = lambda: forced
    print(f"dense decode GEMV up to {rows} rows, layout {layout} past 16 rows, SWA caches head-major: "
          f"{cache.SWA_CACHE_HEAD_MAJOR}", flush=True)
    return bench_model.main(rest)


if __name__ == "__main__":
    sys.exit(main())
