"""`python -m sbops.bench` / `sbops-bench`: cross-backend correctness and speed report.

    python -m sbops.bench                       # the default run: headline rows, minutes (see below)
    python -m sbops.bench --full                # every case, backend and peer (tens of minutes on a GPU)
    python -m sbops.bench --model --help        # the whole-model benchmark (sbops.bench.model)
    python -m sbops.bench --ops swa,topk_gating --backends cuda --shapes 32k
    python -m sbops.bench --full --markdown benchmarks/RESULTS.md --plots benchmarks/plots
    python -m sbops.bench --compare old.json     # this run vs an earlier one
    python -m sbops.bench --compare old.json new.json   # two files, no run

Default run (no mode flag): one headline row per op at the SpikingBrain-7B shapes on a GPU
(linear_attn fwd and fwd+bwd at T=32k, swa fwd at 32k, both decode ops at B=1, spike_encode,
spike_linear (W8ASpike, M=8192 on the 7B gate/up shape), topk_gating, moe_permute / moe_unpermute at T=16k, E=16, k=1), the small correctness checks, the
GPU backends only when one is available (else the CPU reference with small shapes), and every
peer except fla (whose autotuning alone takes minutes; --peers all or --full runs it).  It takes
about 1.5 minutes on an H200 (80-86 s measured) and under a minute on a small CPU.
--full: every speed case, the large correctness checks, every available backend (the CPU one
included) and every peer.  --quick: every speed case with the small shapes.
--model [ARGS]: hands ARGS to the whole-model benchmark, `python -m sbops.bench.model` (TTFT from 8k
to 4M tokens, decode ms/token and memory of a SpikingBrain-7B-shaped model against a Qwen2-7B-shaped
Hugging Face model); `--model --help` lists its options.
Each speed row shows the median of the default call, the same with data checks off and on
(`sbops.set_data_checks`), the wrapper overhead of `sbops.<op>` over the kernel call it dispatches
to, GB/s, TFLOP/s, the roofline floor and each peer's time and ratio.

Exit status: 1 if any correctness check failed (or errored), 2 on bad arguments (an unknown op,
a missing --compare/--merge file, nothing selected to run, no selected backend available), 130 when
interrupted (Ctrl-C / SIGTERM: the partial results are still reported), else 0.  The JSON file is
rewritten after every case, so a run killed from outside keeps what it measured.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import torch

from . import report


# every peer a case may time (tests/test_bench.py checks the cases name no other); --peers takes these or their
# dotted prefixes ("torch" = torch.eager, torch.compile and torch.matmul)
PEER_NAMES = ("fla.chunk_gla", "fla.fused_recurrent_gla", "sdpa.full_causal", "sdpa.contiguous_window", "flex",
              "torch.eager", "torch.compile", "torch.matmul")
CPU_DEFAULT_PEERS = ("fla", "sdpa", "torch.eager")
GPU_DEFAULT_PEERS = ("sdpa", "flex", "torch.eager", "torch.compile")   # the default run: all but fla


def _split(values: Optional[List[str]]) -> Optional[List[str]]:
    """['a,b', 'c'] -> ['a', 'b', 'c']; None stays None."""
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m sbops.bench", description=__doc__, allow_abbrev=False,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="every speed case, small shapes")
    mode.add_argument("--full", action="store_true",
                      help="every speed case at the SpikingBrain shapes (small ones on the CPU backend), the "
                           "large checks, every backend and peer")
    mode.add_argument("--model", nargs=argparse.REMAINDER, metavar="ARGS",
                      help="run the model benchmark (sbops.bench.model) with ARGS, which follow --model; "
                           "'--model --help' lists them")
    ap.add_argument("--long", action="store_true",
                    help="also time linear_attn fwd at T=1M and fwd+bwd at T=128k (full mode)")
    ap.add_argument("--ops", action="append", metavar="NAMES",
                    help="families (linear_attn, swa, spike, moe) or op names, comma separated")
    ap.add_argument("--backends", action="append", metavar="NAMES",
                    help="backends to run (default: every available one; in the default run with a GPU, the "
                         "GPU backends only)")
    ap.add_argument("--shapes", action="append", metavar="TEXT",
                    help="keep cases whose name or shape contains one of these substrings")
    ap.add_argument("--peers", action="append", metavar="NAMES",
                    help="peer name prefixes to time (fla, sdpa, flex, torch.eager, torch.compile; 'torch' = "
                         "both), 'all' or 'none'; default on a GPU: all with --full/--quick, all but fla in "
                         "the default run; on a CPU: fla/sdpa/torch.eager (compiling flex/torch.compile peers "
                         "takes 10-30 s each there)")
    ap.add_argument("--only", choices=("correctness", "speed"), help="run only one part")
    ap.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                    help="input dtype (default: float32 on CPU, bfloat16 on GPU)")
    ap.add_argument("--json", metavar="PATH", help="result file (default: sbops-bench.json in $OUT or the cwd)")
    ap.add_argument("--markdown", metavar="PATH", help="also write a Markdown report")
    ap.add_argument("--plots", metavar="DIR", help="write PNG plots (speedup per family, time to first token)")
    ap.add_argument("--ttft", action=argparse.BooleanOptionalAction, default=None,
                    help="measure the time-to-first-token curve (default: on with --plots or --markdown)")
    ap.add_argument("--compare", nargs="+", metavar="JSON",
                    help="OLD: compare this run with OLD; OLD NEW: compare two files without running")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="write one report (--json/--markdown/--plots) from several runs' JSON files, e.g. a GPU "
                         "run split by --ops across machines or time limits; runs nothing")
    ap.add_argument("--budget", type=float, help="seconds of timing per measurement (default 1 CPU, 10 GPU)")
    ap.add_argument("--timeout", type=float, help="hard limit per case in seconds (default 20x budget)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    args = ap.parse_args(argv)
    if args.model is not None:   # "--model" itself is handled before parsing; this is "--model=..."
        ap.error("--model takes the model benchmark's options as separate words after it "
                 "(python -m sbops.bench --model --tiny); '--model --help' lists them")
    if args.compare and len(args.compare) > 2:
        ap.error("--compare takes OLD or OLD NEW")
    for path in (args.compare or []) + (args.merge or []):   # before a run that may take minutes
        if not os.path.isfile(path):
            ap.error(f"no such result file: {path}")
        try:
            r = report.load_json(path)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            ap.error(f"{path} is not a result file of python -m sbops.bench (JSON): {e}")
        if not (isinstance(r, dict) and isinstance(r.get("meta"), dict)):
            ap.error(f"{path} is not a result file of python -m sbops.bench (no 'meta' object)")
    if args.merge:
        if args.compare or args.ops or args.shapes or args.only or args.ttft is not None:
            ap.error("--merge writes one report from result files and runs nothing: it takes only --json, "
                     "--markdown, --plots and --quiet")
        seen = [os.path.realpath(p) for p in args.merge]
        if len(set(seen)) < len(seen):
            ap.error(f"--merge names a file twice: {' '.join(args.merge)} (its rows would be counted twice)")
    for flag, path, is_dir in (("--json", args.json, False), ("--markdown", args.markdown, False),
                               ("--plots", args.plots, True)):
        why = report.unwritable(path, is_dir) if path else None
        if why:    # before a run that may take minutes, not after it (the report would be lost)
            ap.error(f"{flag} {path}: {why}")
    if args.budget is not None and not args.budget > 0:
        ap.error(f"--budget must be > 0 seconds, got {args.budget}")
    if args.timeout is not None and not args.timeout > 0:
        ap.error(f"--timeout must be > 0 seconds, got {args.timeout}")
    return args


def _progress_printer(total: int, quiet: bool):
    """(advance(label), stop()) - a rich progress bar on a TTY, plain lines on stderr otherwise."""
    if quiet:
        return (lambda label, done=True: None), (lambda: None)
    if report.HAVE_RICH and sys.stdout.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        transient=True)
        task = prog.add_task("sbops.bench", total=total)
        prog.start()

        def advance(label, done=True):
            prog.update(task, description=label[:70], advance=1 if done else 0)
        return advance, prog.stop
    count = [0]

    def advance(label, done=True):
        if done:
            count[0] += 1
            print(f"[{count[0]}/{total}] {label}", file=sys.stderr, flush=True)
    return advance, lambda: None


def _default_json() -> str:
    return os.path.join(os.environ.get("OUT") or os.getcwd(), "sbops-bench.json")


def compare_only(old_path: str, new_path: str) -> int:
    for t in report.compare_tables(report.load_json(old_path), report.load_json(new_path)):
        report.print_table(t)
    return 0


def _write_reports(results: Dict[str, Any], args: argparse.Namespace) -> List[str]:
    """Plots (PNG) and the Markdown report, as asked; returns the plot files."""
    plot_files: List[str] = []
    if args.plots:
        plot_files, note = report.plots(results, args.plots)
        if note and report.missing_extras_note() is None:     # else the summary's note says it
            print(note, file=sys.stderr)
    if args.markdown:
        report.markdown(results, args.markdown, plot_files)
    return plot_files


def _result_tables(results: Dict[str, Any]) -> list:
    tables = []
    if results["correctness"]:
        tables.append(report.correctness_table(results["correctness"]))
    if results["speed"]:
        tables.append(report.speed_table(results["speed"]))
    if results.get("ttft"):
        tables.append(report.ttft_table(results["ttft"]))
    return tables


def merge_only(args: argparse.Namespace) -> int:
    """One report from several JSON results: rows concatenated in file order, meta from the first
    file plus every file's command, the first time-to-first-token curve found."""
    runs = [report.load_json(p) for p in args.merge]
    merged: Dict[str, Any] = {"meta": dict(runs[0]["meta"]), "correctness": [], "speed": []}
    merged["meta"]["command"] = " && ".join(r["meta"].get("command", "?") for r in runs)
    merged["meta"]["merged_from"] = [{"file": os.path.basename(p), "date": r["meta"].get("date"),
                                      "device": r["meta"].get("device")} for p, r in zip(args.merge, runs)]
    devices = {r["meta"].get("device") for r in runs}
    if len(devices) > 1:
        print(f"warning: merging runs from different devices: {', '.join(map(str, devices))}", file=sys.stderr)
    for r in runs:
        merged["correctness"] += r.get("correctness", [])
        merged["speed"] += r.get("speed", [])
        for key in ("roofline", "peers_installed"):
            if isinstance(r["meta"].get(key), dict):
                merged["meta"].setdefault(key, {})
                merged["meta"][key] = {**r["meta"][key], **merged["meta"][key]}
        if r.get("ttft") and not merged.get("ttft"):
            merged["ttft"] = r["ttft"]
        if r["meta"].get("interrupted"):
            merged["meta"]["interrupted"] = True
    report.write_json(merged, args.json or _default_json())
    _write_reports(merged, args)
    _print = _printer()
    for t in _result_tables(merged):
        report.print_table(t, _print.console)
    _print(report.summary_text(merged))
    return 1 if report.summary(merged)["checks_failed"] else 0


def run_model(own: List[str], model_argv: List[str]) -> int:
    """`--model ARGS`: the model benchmark (sbops.bench.model, imported only now)."""
    if own:
        print(f"--model takes the model benchmark's options after it and nothing before it (got {' '.join(own)}); "
              "python -m sbops.bench --model --help lists its options", file=sys.stderr)
        return 2
    try:
        from . import model
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.model":
            raise
        print("the model benchmark (sbops.bench.model) is not part of this sbops build", file=sys.stderr)
        return 2
    return model.main(model_argv)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--model" in argv:
        i = argv.index("--model")
        return run_model(argv[:i], argv[i + 1:])
    t_start = time.perf_counter()
    args = parse_args(argv)
    if args.compare and len(args.compare) == 2:
        return compare_only(*args.compare)
    if args.merge:
        return merge_only(args)

    import sbops

    from . import cases as C
    from . import harness, peers, runner, ttft

    mode = "full" if args.full else "quick" if args.quick else "default"
    info = sbops.backends()
    wanted = _split(args.backends)
    unknown = [b for b in (wanted or []) if b not in info]
    if unknown:
        print(f"unknown backend(s) {', '.join(unknown)}; registered: {', '.join(info)}", file=sys.stderr)
        return 2
    run_backends = [b for b in (wanted or list(info)) if info[b]["available"]]
    backend_note = None
    gpu_backends = [b for b in run_backends if info[b]["devices"][0] != "cpu"]
    if mode == "default" and not wanted and gpu_backends and len(gpu_backends) < len(run_backends):
        # the newcomer's run: the GPU backends; the CPU reference (small shapes) with --full
        backend_note = (f"backend(s) {', '.join(b for b in run_backends if b not in gpu_backends)} not run by "
                        "default when a GPU is present (--full or --backends cpu runs them)")
        run_backends = gpu_backends
    for b in wanted or []:
        if not info[b]["available"]:
            print(f"note: backend {b} is not available here: {info[b]['reason']}", file=sys.stderr)
    # sbops.backends() lists the highest priority first, so GPU backends run before the CPU
    ops, shapes = _split(args.ops), _split(args.shapes)
    known = ({n for it in C.checks() + C.speed_cases("full", long=True) for n in (it.family, it.op.split(".")[0], it.op)}
             if ops else set())
    bad_ops = sorted(set(ops or ()) - known)
    if bad_ops:
        print(f"python -m sbops.bench: error: unknown --ops {', '.join(bad_ops)}; families and ops: "
              f"{', '.join(sorted(known))}", file=sys.stderr)
        return 2

    def env_for(b: str) -> C.Env:
        device = info[b]["devices"][0]
        dtype = getattr(torch, args.dtype) if args.dtype else (torch.float32 if device == "cpu" else torch.bfloat16)
        return C.Env(b, device, dtype, args.seed)

    envs = [env_for(b) for b in run_backends]

    requested_peers = _split(args.peers)
    if requested_peers is not None and requested_peers not in (["all"], ["none"]):
        bad_peers = [w for w in requested_peers if not any(n == w or n.startswith(w + ".") for n in PEER_NAMES)]
        if bad_peers:
            print(f"python -m sbops.bench: error: unknown --peers {', '.join(bad_peers)}; peers: "
                  f"{', '.join(PEER_NAMES)} (or a dotted prefix: fla, sdpa, torch), or 'all' / 'none' alone",
                  file=sys.stderr)
            return 2
    peer_notes = []
    if requested_peers is None and any(e.device == "cpu" for e in envs):
        peer_notes.append("CPU default: compiled peers (flex, torch.compile) not run on the CPU (compile time); "
                          "--peers all runs them")
    if requested_peers is None and mode == "default" and any(e.device != "cpu" for e in envs):
        peer_notes.append("default run: the fla peers are not run on the GPU (their autotuning takes 1-3 minutes); "
                          "--full or --peers all runs them")
    peer_note = "; ".join(peer_notes) or None

    def peers_for(env: C.Env) -> Optional[List[str]]:
        """Peer name prefixes to time on this backend (None: all)."""
        if requested_peers is None:
            # compiling flex / torch.compile peers costs 10-30 s each on a small CPU: opt-in there
            if env.device == "cpu":
                return list(CPU_DEFAULT_PEERS)
            return list(GPU_DEFAULT_PEERS) if mode == "default" else None
        if requested_peers == ["all"]:
            return None
        return [] if requested_peers == ["none"] else requested_peers

    def budget_for(env: C.Env) -> float:
        return args.budget if args.budget is not None else (1.0 if env.device == "cpu" else 10.0)

    checks = [] if args.only == "speed" else [c for c in C.select(C.checks(), ops, shapes)
                                              if mode == "full" or not c.full_only]

    def shapes_for(env: C.Env) -> str:
        """The CPU reference always gets the quick shapes: the full (GPU) shapes would take hours
        there, in native calls no time limit can interrupt."""
        return "quick" if env.device == "cpu" or mode == "quick" else "full"

    def speed_for(env: C.Env) -> list:
        """The speed cases of one backend (the default run: the headline ones)."""
        if args.only == "correctness":
            return []
        return C.select(C.speed_cases(shapes_for(env), long=args.long, headline=mode == "default"), ops, shapes)

    speed = {env.backend: speed_for(env) for env in envs}
    want_ttft = args.ttft if args.ttft is not None else bool(args.plots or args.markdown)
    families = {c.family for c in C.select(C.speed_cases("full"), ops, None)}
    ttft_env = next((e for e in envs if e.device != "cpu"), envs[0] if envs else None)
    do_ttft = (want_ttft and args.only != "correctness" and ttft_env is not None
               and {"linear_attn", "swa"} <= families)
    ttft_why = None
    if want_ttft and not do_ttft:
        ttft_why = ("time-to-first-token curve skipped: " +
                    ("--only correctness runs no timing" if args.only == "correctness" else
                     "no backend selected" if ttft_env is None else
                     "it needs the linear_attn and swa families in --ops"))
        if args.ttft:   # asked for explicitly: say so now, not only in the report
            print(f"python -m sbops.bench: {ttft_why}", file=sys.stderr)

    ttft_ts = ttft.GPU_TS if ttft_env is not None and ttft_env.device != "cpu" else ttft.CPU_TS
    total = len(envs) * len(checks) + sum(map(len, speed.values())) + (len(ttft_ts) if do_ttft else 0)
    if total == 0:   # asked for something this machine has nothing of: not a success
        why = ("no selected backend is available here" if not envs else
               "no check or speed case matches --ops / --shapes / --only")
        print(f"python -m sbops.bench: nothing to run: {why}", file=sys.stderr)
        return 2
    advance, stop = _progress_printer(total, args.quiet)

    devices = sorted({e.device for e in envs}, key=lambda d: d == "cpu")
    main_device = devices[0] if devices else "cpu"
    results: Dict[str, Any] = {
        "meta": {
            "device": harness.device_name(main_device), "device_type": main_device,
            "torch": torch.__version__, "triton": _version("triton"), "sbops": sbops.__version__,
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": "python -m sbops.bench " + " ".join(sys.argv[1:] if argv is None else argv),
            "mode": mode, "speed_shapes": {e.backend: shapes_for(e) for e in envs}, "backend_note": backend_note,
            "dtype": ", ".join(sorted({str(e.dtype).replace("torch.", "") for e in envs})),
            "backends": {n: {"available": b["available"], "reason": b["reason"], "devices": b["devices"]}
                         for n, b in info.items()},
            "backends_run": run_backends, "peers_installed": peers.installed(),
            "peers_run": {e.backend: "all" if peers_for(e) is None else peers_for(e) for e in envs},
            "peers_note": peer_note,
            "budget_s": {e.backend: budget_for(e) for e in envs},
            "timeout_s": {e.backend: args.timeout or 20 * budget_for(e) for e in envs},
            "seed": args.seed, "roofline": {},
        },
        "correctness": [], "speed": [],
    }
    json_path = args.json or _default_json()

    def save() -> None:
        """Rewrite the JSON after every case: a run killed from outside keeps what it measured."""
        report.write_json(results, json_path)

    main_thread = threading.current_thread() is threading.main_thread()
    previous_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_interrupt) if main_thread else None
    try:
        for env in envs:
            budget, timeout = budget_for(env), args.timeout or 20 * budget_for(env)
            for chk in checks:
                advance(f"{env.backend} check {chk.op} {chk.shape}", done=False)
                row = runner.run_check(chk, env, timeout)
                results["correctness"].append(row)
                save()
                advance(f"{env.backend} check {chk.op} {chk.shape}: {report.result_word(row)}")
            if speed[env.backend] and env.device not in results["meta"]["roofline"]:
                results["meta"]["roofline"][env.device] = harness.roofline(env.device, env.dtype)
            for case in speed[env.backend]:
                label = f"{env.backend} speed {case.name}"
                advance(label, done=False)
                row = runner.run_speed(case, env, results["meta"]["roofline"][env.device], budget, timeout,
                                       peers_for(env), progress=lambda s: advance(f"{env.backend} {s}", done=False))
                results["speed"].append(row)
                save()
                advance(f"{label}: " + (report.fmt_ms(row["median_ms"]) if row["median_ms"] is not None
                                        else row.get("error") or row.get("skipped", "")))
        if do_ttft:
            cpu = ttft_env.device == "cpu"
            budget, timeout = budget_for(ttft_env), args.timeout or 20 * budget_for(ttft_env)
            H, HKV, D, window = (4, 1, 64, 256) if cpu else (C.H7, C.HKV7, C.D7, C.WINDOW7)
            results["ttft"] = ttft.ttft_curve(ttft_env, ttft_ts, H, HKV, D, window, budget,
                                              sdpa_limit_s=0.3 if cpu else 1.0, timeout=timeout,
                                              progress=lambda s: advance(s))
        elif want_ttft:
            results["ttft_note"] = ttft_why
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: report what was measured so far
        results["meta"]["interrupted"] = True
    finally:
        stop()
        if main_thread:
            signal.signal(signal.SIGTERM, previous_sigterm)

    # ---- output: files first, then the tables, the summary last
    results["meta"]["wall_s"] = round(time.perf_counter() - t_start, 1)
    save()
    plot_files = _write_reports(results, args)
    tables = _result_tables(results)
    if args.compare:
        tables += report.compare_tables(report.load_json(args.compare[0]), results)
    _print = _printer()
    for t in tables:
        report.print_table(t, _print.console)
    failed = report.summary(results)["checks_failed"]
    _print(f"{results['meta']['device']} | mode {mode} | backends {', '.join(run_backends) or 'none'}")
    _print(report.summary_text(results))
    if peer_note and results["speed"]:
        _print(peer_note)
    if backend_note:
        _print(backend_note)
    for line in _not_here_notes(info, results):
        _print(line)
    extras = report.missing_extras_note()
    if extras:
        _print(extras)
    _print(f"finished in {results['meta']['wall_s']:.0f} s")
    _print(f"JSON: {json_path}" + (f" | Markdown: {args.markdown}" if args.markdown else "")
           + (f" | plots: {', '.join(plot_files)}" if plot_files else ""))
    if not envs:
        _print("no backend available to run")
    if results["meta"].get("interrupted"):
        _print("INTERRUPTED: the results above are partial")
    if failed:
        return 1
    return 130 if results["meta"].get("interrupted") else 0


def _not_here_notes(info: dict, results: dict) -> List[str]:
    """What the run could not use on this machine, and why: backends not available (e.g. cuda on a CPU-only
    machine) and peers skipped (their rows say n/a), one line per distinct reason."""
    out = [f"backend {name} not available here: {d['reason']}" for name, d in info.items()
           if not d["available"] and d.get("reason")]
    reasons: Dict[str, List[str]] = {}
    for row in results.get("speed", []):
        for peer, why in (row.get("peers_skipped") or {}).items():
            names = reasons.setdefault(str(why), [])
            if peer not in names:
                names.append(peer)
    out += [f"peer{'s' if len(n) > 1 else ''} {', '.join(n)} not timed: {why}" for why, n in reasons.items()]
    return out


def _sigterm_to_interrupt(signum, frame):
    raise KeyboardInterrupt


def _version(module: str) -> Optional[str]:
    try:
        return __import__(module).__version__
    except Exception:
        return None


def _printer() -> Callable[[str], None]:
    """print() through rich's console when available (so long lines wrap with the tables)."""
    console = None
    if report.HAVE_RICH and sys.stdout.isatty():
        import rich.console
        console = rich.console.Console()

    def out(text: str) -> None:
        if console is not None:
            console.print(report._escape(text), highlight=False)
        else:
            print(text)
    out.console = console
    return out


if __name__ == "__main__":
    sys.exit(main())
