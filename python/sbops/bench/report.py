"""Output: terminal tables (rich, or plain text without it), the JSON file, the Markdown report,
PNG plots and the comparison with an earlier run."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

try:
    import rich.console
    import rich.table
    HAVE_RICH = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_RICH = False

Table = Tuple[str, List[str], List[List[str]]]      # title, header, rows of cells


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):      # ValueError: sys.modules[module] is None (blocked)
        return False


def missing_extras_note() -> Optional[str]:
    """One line naming the optional packages that are missing and what is skipped without them."""
    parts = []
    if not HAVE_RICH:
        parts.append("rich is not installed, so the tables are plain text")
    if not _installed("matplotlib"):
        parts.append("matplotlib is not installed, so plots were skipped")
    if not parts:
        return None
    return "note: " + "; ".join(parts) + " (pip install rich matplotlib, or the sbops[bench] extra, adds them)"


# --------------------------------------------------------------------------- formatting
def fmt(x: Optional[float], digits: int = 3) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return str(x)
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.2e}"
    return f"{x:.{digits}g}"


def fmt_ms(ms: Optional[float]) -> str:
    if ms is None:
        return "-"
    if ms >= 1e3:
        return f"{ms / 1e3:.3g} s"
    if ms < 0.01:
        return f"{ms * 1e3:.3g} us"
    return f"{ms:.3g} ms"


def result_word(row: Dict[str, Any]) -> str:
    if row.get("skipped"):
        return "skip: " + row["skipped"]
    if row.get("error"):
        return "ERROR " + row["error"]
    if row.get("passed"):
        return "pass"
    bad = [f"{n} (rel {fmt(o.get('rel'))}" + (f", {o['mismatches']} mismatches" if o.get("mismatches") else "") + ")"
           for n, o in (row.get("outputs") or {}).items() if not o.get("passed")]
    return "FAIL " + ", ".join(bad)


# --------------------------------------------------------------------------- tables
def correctness_table(rows: Sequence[Dict[str, Any]]) -> Table:
    body = [[r["op"], r["backend"], r["dtype"], r["shape"], fmt(r.get("max_abs")), fmt(r.get("rel")),
             fmt(r["bound"]), result_word(r)] for r in rows]
    return "Correctness vs float64 reference", ["op", "backend", "dtype", "shape", "max abs", "rel",
                                                "bound", "result"], body


def _peer_cell(row: Dict[str, Any]) -> str:
    """'name time (ratio)' per timed peer, then the peers that errored or could not run (the
    reasons are in the JSON's peers_skipped)."""
    parts = [f"{name} {fmt_ms(ms)} ({row['ratios'][name]:.2f}x)" for name, ms in row.get("peers", {}).items()]
    skipped = row.get("peers_skipped", {})
    errored = [n for n, why in skipped.items() if why.startswith("error")]
    unavailable = [n for n in skipped if n not in errored]
    if errored:
        parts.append("ERROR in " + ", ".join(errored))
    if unavailable:
        parts.append("n/a: " + ", ".join(unavailable))
    return "; ".join(parts) or "-"


def fmt_us(us: Optional[float]) -> str:
    return "-" if us is None else f"{us:.1f} us"


def _wrapper_cell(r: Dict[str, Any]) -> str:
    if r.get("wrapper"):
        return fmt_us(r["wrapper"].get("overhead_us"))
    return "ERROR" if r.get("wrapper_error") else "-"


SPEED_TITLE = ("Speed. median: the default call (data checks off for GPU tensors, on for CPU tensors); checks off / on: "
               "with sbops.set_data_checks(False / True); wrapper: host time per call of sbops.<op>(...) minus the "
               "kernel call it dispatches to, small inputs (benchmarks/README.md); ratio = peer time / sbops median "
               "(> 1: sbops faster)")


def speed_table(rows: Sequence[Dict[str, Any]]) -> Table:
    body = []
    for r in rows:
        if r.get("error") or r.get("skipped"):
            body.append([r["case"], r["backend"], ("ERROR " + r["error"]) if r.get("error") else
                         "skip: " + r["skipped"]] + [""] * 8)
            continue
        on = r.get("checks_on_ms", r.get("checked_ms"))      # checked_ms: files written before 2026-12
        body.append([r["case"], r["backend"], fmt_ms(r["median_ms"]), fmt_ms(r.get("checks_off_ms")), fmt_ms(on),
                     _wrapper_cell(r), fmt(r.get("gbps")), fmt(r.get("tflops")),
                     (fmt_ms(r.get("floor_ms")) + f" ({r['bound']})") if r.get("floor_ms") else "-",
                     f"{100 * r['floor_fraction']:.1f}%" if r.get("floor_fraction") else "-",
                     _peer_cell(r)])
    return (SPEED_TITLE, ["case", "backend", "median", "checks off", "checks on", "wrapper", "GB/s", "TFLOP/s",
                          "floor", "of roofline", "peers (ratio)"], body)


def ttft_table(ttft: Dict[str, Any]) -> Table:
    body = []
    for r in ttft["rows"]:
        sd = fmt_ms(r.get("sdpa_ms")) + (" (extrapolated)" if r.get("sdpa_extrapolated") else "")
        body.append([str(r["T"]), fmt_ms(r.get("linear_attn_ms")), fmt_ms(r.get("swa_ms")), fmt_ms(r.get("ours_ms")),
                     sd, f"{r['speedup']:.2f}x" if r.get("speedup") else (r.get("error") or "-")])
    c = ttft["config"]
    title = (f"Time to first token, attention only ({ttft['backend']}, {ttft['dtype']}, H={c['H']} HKV={c['HKV']} "
             f"D={c['D']} window={c['window']})")
    return title, ["T", "linear_attn", "swa", "ours (1+1 layers)", "2 x SDPA causal", "speedup"], body


def compare_tables(old: Dict[str, Any], new: Dict[str, Any]) -> List[Table]:
    """Per-case speed change and correctness changes between two result files."""
    def by_key(res, key, what):
        return {key(r): r for r in res.get(what, [])}
    old_s = by_key(old, lambda r: (r["case"], r["backend"]), "speed")
    body = []
    for r in new.get("speed", []):
        o = old_s.get((r["case"], r["backend"]))
        if o is None:
            body.append([r["case"], r["backend"], "-", fmt_ms(r.get("median_ms")), "new case"])
            continue
        a, b = o.get("median_ms"), r.get("median_ms")
        if a and b:
            change = f"{100 * (b / a - 1):+.1f}% " + ("(faster)" if b < a else "(slower)" if b > a else "")
        else:
            change = "n/a (error or skipped)"
        body.append([r["case"], r["backend"], fmt_ms(a), fmt_ms(b), change])
    gone = [k for k in old_s if k not in {(r["case"], r["backend"]) for r in new.get("speed", [])}]
    body += [[c, b, fmt_ms(old_s[(c, b)].get("median_ms")), "-", "not in new run"] for c, b in gone]
    tables = [("Speed change vs earlier run", ["case", "backend", "old", "new", "change"], body)]

    key = lambda r: (r["op"], r["backend"], r["dtype"], r["shape"])  # noqa: E731
    old_c = by_key(old, key, "correctness")
    flips = [[r["op"], r["backend"], r["shape"], result_word(old_c[key(r)]), result_word(r)]
             for r in new.get("correctness", []) if key(r) in old_c and old_c[key(r)].get("passed") != r.get("passed")]
    if flips:
        tables.append(("Correctness changes", ["op", "backend", "shape", "old", "new"], flips))
    return tables


def print_table(table: Table, console=None) -> None:
    """A rich table on a terminal; plain aligned text otherwise (logs, pipes)."""
    title, header, body = table
    if HAVE_RICH and sys.stdout.isatty():
        t = rich.table.Table(title=title, show_lines=False, title_justify="left")
        for h in header:
            t.add_column(h, overflow="fold")
        for row in body:
            styled = []
            for cell in row:
                if cell.startswith(("FAIL", "ERROR")):
                    cell = f"[bold red]{_escape(cell)}[/]"
                elif cell == "pass":
                    cell = "[green]pass[/]"
                else:
                    cell = _escape(cell)
                styled.append(cell)
            t.add_row(*styled)
        (console or rich.console.Console()).print(t)
        return
    print(plain_table(table))


def _escape(s: str) -> str:
    return s.replace("[", "\\[")


def plain_table(table: Table) -> str:
    title, header, body = table
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [title, line(header), line(["-" * w for w in widths])] + [line(r) for r in body]
    return "\n".join(out) + "\n"


def markdown_table(table: Table) -> str:
    title, header, body = table
    esc = lambda c: c.replace("|", "\\|")  # noqa: E731
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in body]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- summary
def summary(results: Dict[str, Any]) -> Dict[str, int]:
    c = results.get("correctness", [])
    s = results.get("speed", [])
    return {
        "checks_passed": sum(1 for r in c if r.get("passed") is True),
        "checks_failed": sum(1 for r in c if r.get("passed") is False),
        "checks_skipped": sum(1 for r in c if r.get("passed") is None),
        "speed_cases": sum(1 for r in s if r.get("median_ms") is not None),
        "speed_errors": sum(1 for r in s if r.get("error")),
        "speed_skipped": sum(1 for r in s if r.get("skipped")),
    }


def summary_text(results: Dict[str, Any]) -> str:
    n = summary(results)
    return (f"correctness: {n['checks_passed']} passed, {n['checks_failed']} failed, {n['checks_skipped']} skipped "
            f"(backend cannot serve the inputs) | speed: {n['speed_cases']} timed, {n['speed_errors']} errors, "
            f"{n['speed_skipped']} skipped")


# --------------------------------------------------------------------------- JSON
def _clean(x):
    """NaN/inf -> None so that the file is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_json(results: Dict[str, Any], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(_clean(results), f, indent=1, allow_nan=False)
        f.write("\n")


def unwritable(path: str, is_dir: bool) -> Optional[str]:
    """Why an output path cannot be written (its missing parent folders are created), or None."""
    p = os.path.abspath(path)
    if os.path.exists(p):
        if is_dir and not os.path.isdir(p):
            return "exists and is not a folder"
        if not is_dir and os.path.isdir(p):
            return "is a folder; give a file path"
        if not os.access(p, os.W_OK):
            return "is not writable"
        return None
    parent = os.path.dirname(p)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{parent} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable"
    return None


def load_json(path: str) -> Dict[str, Any]:
    with open(path) as f:
        return json.load(f)


# --------------------------------------------------------------------------- Markdown
def markdown(results: Dict[str, Any], md_path: str, plot_files: Sequence[str]) -> str:
    m = results["meta"]
    lines = ["# sbops benchmark results", ""]
    if m.get("device_type") == "cpu":
        lines += ["> **CPU run.** These numbers come from the C++ reference backend on a small shared CPU with "
                  "the `--quick` shapes; they check correctness and exercise the harness, and say nothing "
                  "about GPU performance. Regenerate on a GPU with "
                  "`python -m sbops.bench --full --markdown benchmarks/RESULTS.md`."]
        if m.get("load_average") is not None:
            lines += [f"> The 1-minute load average was {m['load_average']:.1f} on {m.get('cpu_count')} cores when "
                      "the run started: on a busy machine small ops include scheduler stalls (times in "
                      "multiples of a few ms), so CPU ratios to peers are rough."]
        lines.append("")
    lines += [
        f"- Generated: {m['date']} by `{m['command']}`",
        f"- Device: {m['device']}",
        f"- torch {m['torch']}, Triton {m.get('triton') or 'not installed'}, sbops {m['sbops']}, "
        f"Python {m['python']}",
        f"- Mode: `{m['mode']}`, dtype {m['dtype']}; backends run: {', '.join(m['backends_run']) or 'none'}",
        "- Backends registered: " + "; ".join(
            f"{n} ({'available' if b['available'] else 'unavailable: ' + str(b['reason'])})"
            for n, b in m["backends"].items()),
        "- Peers installed: " + ", ".join(f"{k} {v or 'no'}" for k, v in m.get("peers_installed", {}).items()),
    ]
    for dev, roof in m.get("roofline", {}).items():
        lines.append(f"- Roofline ({dev}): bandwidth {fmt((roof.get('bw') or 0) / 1e9)} GB/s, peak "
                     f"{fmt((roof.get('flops') or 0) / 1e12)} TFLOP/s ({roof.get('source')})")
    lines += ["", f"Summary: {summary_text(results)}", ""]
    lines += ["## Correctness", "",
              "Relative error `||out - ref|| / ||ref||` against float64 references on fresh random inputs; bound "
              "1e-5 for float32, 1e-2 for bfloat16 (gradients 2e-2); integer outputs must match exactly "
              "(spike counts: except at rounding ties of x / vth). `rel`/`max abs` are the worst over the op's "
              "outputs.", ""]
    lines.append(markdown_table(correctness_table(results.get("correctness", []))))
    lines += ["## Speed", "",
              "Median time of the default call; `checks off` / `checks on`: the same with "
              "`sbops.set_data_checks(False)` / `(True)`; `wrapper`: host time per call of the public "
              "`sbops.<op>(...)` minus the kernel call it dispatches to, on small inputs (method in "
              "benchmarks/README.md). GB/s and TFLOP/s count the bytes each input/output must move once and "
              "the FLOPs of the algorithm (conventions in benchmarks/README.md); `floor` is the roofline time "
              "(max of bytes / bandwidth and FLOPs / peak) and `of roofline` = floor / median.", ""]
    lines.append(markdown_table(speed_table(results.get("speed", []))))
    not_timed = sorted({(name, why) for r in results.get("speed", [])
                        for name, why in r.get("peers_skipped", {}).items()})
    if not_timed:
        lines += ["Peers not timed:", ""] + [f"- {name}: {why}" for name, why in not_timed] + [""]
    if m.get("peers_note"):
        lines += [f"Note: {m['peers_note']}.", ""]
    if results.get("ttft"):
        lines += ["## Time to first token", "", results["ttft"]["note"] + ".", ""]
        lines.append(markdown_table(ttft_table(results["ttft"])))
    elif results.get("ttft_note"):
        lines += ["## Time to first token", "", results["ttft_note"], ""]
    if plot_files:
        lines += ["## Plots", ""]
        base = os.path.dirname(os.path.abspath(md_path))
        for p in plot_files:
            rel = os.path.relpath(os.path.abspath(p), base)
            lines.append(f"![{os.path.basename(p)}]({rel})")
        lines.append("")
    text = "\n".join(lines)
    os.makedirs(os.path.dirname(os.path.abspath(md_path)), exist_ok=True)
    with open(md_path, "w") as f:
        f.write(text)
    return text


# --------------------------------------------------------------------------- plots
def plots(results: Dict[str, Any], out_dir: str) -> Tuple[List[str], Optional[str]]:
    """speedup_<family>.png per op family (peer time / sbops time) and ttft.png.
    Returns (files written, a note when matplotlib is missing)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return [], f"plots skipped: matplotlib is not installed ({e})"
    from .cases import FAMILY_OF
    os.makedirs(out_dir, exist_ok=True)
    files = []
    by_family: Dict[str, List[Tuple[str, float]]] = {}
    for r in results.get("speed", []):
        for peer, ratio in r.get("ratios", {}).items():
            by_family.setdefault(FAMILY_OF[r["op"]], []).append((f"{r['case']} [{r['backend']}]\nvs {peer}", ratio))
    for fam, bars in sorted(by_family.items()):
        fig, ax = plt.subplots(figsize=(9, 0.55 * len(bars) + 1.5))
        labels, vals = zip(*bars)
        colors = ["tab:green" if v >= 1 else "tab:red" for v in vals]
        ax.barh(range(len(vals)), vals, color=colors)
        ax.set_yticks(range(len(vals)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("speedup = peer time / sbops time (log scale; > 1: sbops faster)")
        ax.set_title(f"sbops vs peers: {fam} ({results['meta']['device']})", fontsize=9)
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.2f}x", va="center", fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, f"speedup_{fam}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    ttft = results.get("ttft")
    if ttft and any(r.get("ours_ms") for r in ttft["rows"]):
        rows = ttft["rows"]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ours = [(r["T"], r["ours_ms"]) for r in rows if r.get("ours_ms")]
        meas = [(r["T"], r["sdpa_ms"]) for r in rows if r.get("sdpa_ms") and not r.get("sdpa_extrapolated")]
        extra = [(r["T"], r["sdpa_ms"]) for r in rows if r.get("sdpa_ms") and r.get("sdpa_extrapolated")]
        ax.plot(*zip(*ours), "o-", label="sbops: linear_attn + swa (1 layer each)")
        if meas:
            ax.plot(*zip(*meas), "s-", color="tab:red", label="2 x causal SDPA (measured)")
        if extra:
            ax.plot(*zip(*(meas[-1:] + extra)), "s--", color="tab:red", alpha=0.6,
                    label="2 x causal SDPA (extrapolated ~T^2)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T (tokens)")
        ax.set_ylabel("attention time for the prompt (ms)")
        c = ttft["config"]
        ax.set_title(f"Time to first token, attention only ({results['meta']['device']})\n"
                     f"H={c['H']} HKV={c['HKV']} D={c['D']} window={c['window']} {ttft['dtype']}", fontsize=9)
        last = next((r for r in reversed(rows) if r.get("speedup")), None)
        if last:
            ax.annotate(f"{last['speedup']:.1f}x at T={last['T']}", (last["T"], last["ours_ms"]),
                        textcoords="offset points", xytext=(-90, 12), fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, "ttft.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    return files, None
