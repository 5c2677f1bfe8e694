"""The command line of `python -m sbops.bench.model` (sbops/bench/model.py): its argument types and parser."""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

import torch


def parse_len(text: str) -> int:
    t = text.strip().lower()
    mult = {"k": 1 << 10, "m": 1 << 20}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def parse_lens(text: str) -> List[int]:
    """'8k,32k,1m' -> token counts; an argparse type (a bad value is a usage error, exit 2)."""
    try:
        return [parse_len(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected lengths such as 8k,32k,1m (k = 1024, m = 2^20), got {text!r}")


def parse_counts(text: str) -> List[int]:
    """'1,32' -> [1, 32], each >= 1; an argparse type (a bad value is a usage error, exit 2)."""
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected batch sizes >= 1 such as 1,32, got {text!r}")
    return out


def _at_least(lo: float, kind=float, strict: bool = False):
    """An argparse type: a number >= lo (> lo where strict)."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            v = None
        if v is None or v != v or (v <= lo if strict else v < lo):
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'} "
                                             f"{'>' if strict else '>='} {lo:g}, got {text!r}")
        return v
    return parse


def fmt_len(n: int) -> str:
    return f"{n >> 20}M" if n % (1 << 20) == 0 else (f"{n >> 10}k" if n % 1024 == 0 else str(n))


def parse_args(argv: Optional[List[str]], doc: str) -> argparse.Namespace:
    """python -m sbops.bench.model's arguments (doc: that module's docstring, for --help)."""
    ap = argparse.ArgumentParser(prog="python -m sbops.bench.model", description=doc.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    ap.add_argument("--lengths", default=None, type=parse_lens,
                    help="TTFT prompt lengths (default 8k,32k,128k,512k,1m,2m,4m; --tiny / CPU: 256,1k)")
    ap.add_argument("--contexts", default=None, type=parse_lens,
                    help="decode contexts (default 4k,16k,64k,256k,1m; --tiny / CPU: 64,1k)")
    ap.add_argument("--batches", default=None, type=parse_counts,
                    help="decode batch sizes (default 1,32; --tiny / CPU: 1,4)")
    ap.add_argument("--budget-s", type=_at_least(0.0, strict=True), default=450.0,
                    help="time budget of the whole run in seconds (default 450; lengths whose predicted time does "
                         "not fit are skipped)")
    ap.add_argument("--peer-limit-s", type=_at_least(0.0), default=15.0, help="measure the Qwen2 peer while a call is "
                    "predicted to take at most this many seconds (default 15)")
    ap.add_argument("--peer-reserve-s", type=_at_least(0.0), default=None,
                    help="time kept for the peer stage (default min(75, budget / 5))")
    ap.add_argument("--ttft-reserve-s", type=_at_least(0.0), default=None,
                    help="time the decode stage leaves for our TTFT (default min(120, budget / 4))")
    ap.add_argument("--no-peer", dest="peer", action="store_false", help="skip the Qwen2 peer")
    ap.add_argument("--no-graphs", action="store_true", help="decode eagerly (no CUDA graphs)")
    ap.add_argument("--no-fuse", dest="fuse", action="store_false",
                    help="run q/k/v(/gate) and gate/up projections as separate GEMMs (sbops.nn.common.FUSE_PROJECTIONS)")
    ap.add_argument("--fuse-elementwise", dest="fuse_elementwise", action="store_true", default=None,
                    help="run RMSNorm, SwiGLU's activation and RoPE as fused Triton kernels "
                         "(sbops.nn.common.FUSE_ELEMENTWISE; default: SBOPS_FUSE_ELEMENTWISE, on)")
    ap.add_argument("--no-fuse-elementwise", dest="fuse_elementwise", action="store_false",
                    help="run them as torch ops")
    ap.add_argument("--no-eager-decode", dest="eager_decode", action="store_false",
                    help="skip the eager decode comparison point")
    ap.add_argument("--chunk", type=_at_least(1, int), default=None,
                    help="prefill chunk size (default: generate()'s for the model, 16384 tokens, 32768 where its "
                         "layers run on 8-bit weights; --tiny / CPU: 128)")
    ap.add_argument("--decode-steps", type=_at_least(1, int), default=50,
                    help="timed decode steps per point (default 50)")
    ap.add_argument("--weight-quant", choices=["int8", "int8_channel", "fp8"], default=None,
                    help="W8ASpike model: every block projection a SpikeLinear (k=3) on sbops.spike_linear with "
                         "int8 (per group 128), int8_channel (int8 per output channel) or fp8 e4m3 (per channel) "
                         "weights")
    ap.add_argument("--down-quant", choices=["int8_channel"], default=None,
                    help="with --weight-quant: the FFN down projections in int8 with one scale per output channel "
                         "(SpikingBrainConfig.down_weight_quant: one int8 count plane on the vendor int8 GEMM)")
    ap.add_argument("--drop-float-weights", action="store_true",
                    help="with --weight-quant: keep only the 8-bit weights of the spike-coded layers "
                         "(sbops.nn.drop_float_weights; inference only)")
    ap.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                    help="model dtype (default bfloat16; the tiny CPU run is float32)")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (smoke test; default on CPU)")
    ap.add_argument("--out", default=None, help="output folder (default: sbops-model-bench in $OUT or the cwd)")
    args = ap.parse_args(argv)
    if args.down_quant and not args.weight_quant:
        ap.error("--down-quant needs --weight-quant (it changes the down projections of a W8ASpike model)")
    if args.drop_float_weights and not args.weight_quant:
        ap.error("--drop-float-weights needs --weight-quant (only 8-bit spike-coded layers drop their float weights)")
    args.out = args.out or os.path.join(os.environ.get("OUT") or os.getcwd(), "sbops-model-bench")
    if args.device is not None:
        try:
            dev = torch.device(args.device)
        except (RuntimeError, ValueError):
            ap.error(f"--device {args.device}: not a device name (cpu, cuda or cuda:N)")
        if dev.type not in ("cpu", "cuda"):
            ap.error(f"--device {args.device}: the model benchmark runs on cpu or cuda")
        if dev.type == "cuda" and not torch.cuda.is_available():
            ap.error(f"--device {args.device}: no CUDA device is available here")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            ap.error(f"--device {args.device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    from .report import unwritable
    why = unwritable(args.out, True) if args.out else None
    if why:
        ap.error(f"--out {args.out}: {why}")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cpu" and not args.tiny:
        print("sbops.bench.model: no GPU: running the tiny shapes in float32 (a smoke test, not the 7B "
              "benchmark)", file=sys.stderr)
    args.tiny = args.tiny or args.device == "cpu"
    args.lengths = args.lengths or parse_lens("256,1k" if args.tiny else "8k,32k,128k,512k,1m,2m,4m")
    args.contexts = args.contexts or parse_lens("64,1k" if args.tiny else "4k,16k,64k,256k,1m")
    args.batches = args.batches or ([1, 4] if args.tiny else [1, 32])
    # None: generate()'s default for the model built (default_prefill_chunk, set by model.build_ours)
    args.chunk = args.chunk or (128 if args.tiny else None)
    args.peer_reserve_s = min(75.0, args.budget_s / 5) if args.peer_reserve_s is None else args.peer_reserve_s
    args.ttft_reserve_s = min(120.0, args.budget_s / 4) if args.ttft_reserve_s is None else args.ttft_reserve_s
    asked = args.dtype
    args.dtype_name = asked or "bfloat16"
    args.dtype = getattr(torch, args.dtype_name)
    if args.tiny and args.dtype != torch.float32 and args.device == "cpu":
        if asked is not None:
            print(f"sbops.bench.model: --dtype {asked} is not run on the CPU: the tiny CPU run is float32",
                  file=sys.stderr)
        args.dtype, args.dtype_name = torch.float32, "float32"
    if min(args.lengths + args.contexts + args.batches + [args.chunk or 1]) < 1:
        ap.error("lengths, contexts, batches and --chunk must be >= 1")
    return args


