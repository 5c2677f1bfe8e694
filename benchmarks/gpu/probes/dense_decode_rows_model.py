"""The 7B model's decode (sbops.bench.model) with the dense decode GEMV routed up to ROWS rows of x and, past 16 rows,
a forced block layout: the A/B behind sbops.nn.common.DENSE_DECODE_MAX_ROWS and the kernel's default layout for
17-32 rows.  LAYOUT -1 keeps the kernel's default.  Run in session 34 (H100) with session 33's shared-memory
layouts (since removed): B = 32 7.67 -> 9.23 ms with the route raised to 32 rows.
usage: python benchmarks/gpu/probes/dense_decode_rows_model.py ROWS LAYOUT [sbops.bench.model arguments ...]"""
import sys

import torch

from sbops.bench import model as bench_model
from sbops.nn import common


def main():
    rows, layout = int(sys.argv[1]), int(sys.argv[2])
    rest = sys.argv[3:]
    common.DENSE_DECODE_MAX_ROWS = rows
    op = torch.ops.sbops_native.dense_decode

    def forced(x, w, b):
        return op(x, w, b, layout if x.shape[0] > 16 else -1)

    common._dense_op = lambda: forced
    print(f"dense decode GEMV up to {rows} rows, layout {layout} past 16 rows", flush=True)
    return bench_model.main(rest)


if __name__ == "__main__":
    sys.exit(main())
