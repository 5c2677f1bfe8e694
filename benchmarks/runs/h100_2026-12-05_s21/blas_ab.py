# The model bench with the GEMM library chosen: python blas_ab.py default|lt|tunable <sbops.bench.model args>
import sys, torch
mode = sys.argv[1]
if mode == "lt":
    torch.backends.cuda.preferred_blas_library("cublaslt")
elif mode == "tunable":
    import torch.cuda.tunable as tn
    tn.enable(True); tn.tuning_enable(True); tn.set_max_tuning_duration(40); tn.set_filename("/tmp/tunableop_results.csv")
print("BLAS", mode, torch.backends.cuda.preferred_blas_library(), flush=True)
from sbops.bench.model import main
rc = main(sys.argv[2:])
if mode == "tunable":
    import torch.cuda.tunable as tn
    res = tn.get_results()
    print("tuned", len(res), "GEMMs:", *[r[:4] for r in list(res)[:12]], sep="\n  ")
sys.exit(rc)
