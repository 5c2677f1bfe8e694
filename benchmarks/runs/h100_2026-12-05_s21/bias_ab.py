# fp8 model decode with the native decode's bias handed over as float32 (old: a conversion launch per call) or as is
import sys, importlib
sl = importlib.import_module("sbops._backends.cuda.triton.spike_linear")
if sys.argv[1] == "f32":
    orig = sl._native_decode
    sl._native_decode = lambda x, w, s, k, b: orig(x, w, s, k, None if b is None else b.float())
print("BIAS", sys.argv[1], flush=True)
from sbops.bench.model import main
sys.exit(main(sys.argv[2:]))
