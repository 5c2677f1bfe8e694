"""sbops.bench: cross-backend correctness and speed report (`python -m sbops.bench`, `sbops-bench`).

For every op family (linear attention prefill + decode, sliding-window attention prefill + decode,
spike coding, MoE routing) and every available backend: correctness against float64 references
(docs/SPEC.md section 6 bounds) and median times with GB/s or TFLOP/s, the roofline floor and the ratio
to each installed peer (fla, PyTorch SDPA, FlexAttention, torch eager / torch.compile versions).
See benchmarks/README.md for the options, the JSON schema and the FLOP/byte conventions.

Modules: cases (the registry of checks and speed cases), casebase / cases_attn / cases_routing (the
cases themselves), reference (float64 references), harness (timing), overhead (the wrapper column),
peers (the implementations compared against), runner (one case -> one result row), ttft (the
time-to-first-token curve), report (tables, JSON, Markdown, plots, comparison); the command
line is in __main__ (`main()`); model / model_args: the whole-model benchmark (`python -m sbops.bench.model`).
"""
