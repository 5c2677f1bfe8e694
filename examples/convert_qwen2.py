"""Convert a Qwen2 model into a SpikingBrain-style model, generate a few tokens, print cache sizes.

    python examples/convert_qwen2.py                      # tiny random Qwen2 built locally
    python examples/convert_qwen2.py --kind 76b --num-experts 4
    python examples/convert_qwen2.py --spike-k 3 --spike-report   # sparsity of the spike-coded inputs
    python examples/convert_qwen2.py --w8aspike                   # logits of the W8ASpike variant vs the plain one
    python examples/convert_qwen2.py --model /path/to/local/qwen2   # a local Qwen2 checkpoint

Needs `transformers` (for Qwen2Config / Qwen2ForCausalLM). Nothing is downloaded.
"""
import argparse
import os

import torch

from sbops.models import convert_qwen2, generate, spike_report


def tiny_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2)
    return Qwen2ForCausalLM(cfg)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="local path of a Qwen2 checkpoint (default: a tiny random one)")
    ap.add_argument("--kind", choices=["7b", "76b"], default="7b")
    ap.add_argument("--window", type=int, default=None, help="sliding window (default: 4096, or 8 for the tiny model)")
    ap.add_argument("--num-experts", type=int, default=None, help="76b: routed experts (default 16)")
    ap.add_argument("--spike-k", type=float, default=None, help="spike-code the blocks' linear inputs with this k")
    ap.add_argument("--spike-report", action="store_true",
                    help="with --spike-k: print the spike sparsity of the coded inputs on the prompt (bitwise and ternary)")
    ap.add_argument("--w8aspike", action="store_true",
                    help="also convert with spike_k=3 and int8 weights (W8ASpike: sbops.spike_linear at inference) and "
                         "print how far its logits are from the plain converted model's on the prompt")
    ap.add_argument("--prompt-len", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    args = ap.parse_args()
    if args.spike_report and args.spike_k is None:
        ap.error("--spike-report needs --spike-k")
    if args.num_experts is not None and args.kind != "76b":
        ap.error("--num-experts needs --kind 76b (the 7b kind has dense FFNs)")
    if args.model and not os.path.isdir(args.model):
        ap.error(f"--model {args.model}: no such folder (a local Qwen2 checkpoint; nothing is downloaded)")
    for flag, v in (("--prompt-len", args.prompt_len), ("--max-new-tokens", args.max_new_tokens)):
        if v < 1:
            ap.error(f"{flag} must be >= 1, got {v}")

    torch.manual_seed(0)
    if args.model:
        from transformers import Qwen2ForCausalLM
        qwen = Qwen2ForCausalLM.from_pretrained(args.model, local_files_only=True, torch_dtype=torch.float32)
    else:
        qwen = tiny_qwen2()
    overrides = {"window": args.window if args.window is not None else (4096 if args.model else 8)}
    if args.num_experts is not None:
        overrides["num_experts"] = args.num_experts
    if args.spike_k is not None:
        overrides["spike_k"] = args.spike_k
    model = convert_qwen2(qwen.eval(), args.kind, **overrides).eval()
    print(f"converted Qwen2 ({sum(p.numel() for p in qwen.parameters()):,} params) into SpikingBrain-{args.kind} "
          f"({sum(p.numel() for p in model.parameters()):,} params); layers: {', '.join(model.config.layer_types)}")

    prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt_len))
    cache = model.new_cache(1, max_length=args.prompt_len + args.max_new_tokens)
    sizes = [tuple(t.shape) for t in cache.tensors()]
    out = generate(model, prompt, args.max_new_tokens, cache=cache)
    assert [tuple(t.shape) for t in cache.tensors()] == sizes
    print("prompt   :", prompt[0].tolist())
    print("generated:", out[0, args.prompt_len:].tolist())
    print(f"cache after {int(cache.seq_lens[0])} tokens: {cache.nbytes():,} bytes (unchanged since allocation)")
    for i, (kind, c) in enumerate(zip(model.config.layer_types, cache.layers)):
        parts = [c.linear, c.softmax] if kind == "hybrid" else [c]
        shapes = "; ".join(f"state {tuple(p.state.shape)}" if hasattr(p, "state")
                           else f"ring buffer k/v {tuple(p.k.shape)}" for p in parts)
        print(f"  layer {i} ({kind}): {shapes}")
    if args.w8aspike:
        plain = convert_qwen2(qwen.eval(), args.kind, **{**overrides, "spike_k": None}).eval()
        with torch.inference_mode():
            ref = plain(prompt).logits.double()
        for name, extra in (("spike coding k=3", {"spike_k": 3.0}),
                            ("W8ASpike (k=3 + int8 weights)", {"spike_k": 3.0, "weight_quant": "int8"})):
            variant = convert_qwen2(qwen.eval(), args.kind, **{**overrides, **extra}).eval()
            with torch.inference_mode():
                got = variant(prompt).logits.double()
            rel = ((got - ref).norm() / ref.norm()).item()
            agree = (got.argmax(-1) == ref.argmax(-1)).double().mean().item()
            print(f"{name} vs the plain converted model on the prompt: logits relative L2 difference {rel:.3g}, "
                  f"top-1 agreement {agree:.1%}")
    if args.spike_report:
        rep = spike_report(model, prompt)
        for mode, st in rep["overall"].items():
            print(f"spike coding (k={args.spike_k}, {mode} trains) over {len(rep['layers'])} spike-coded linear "
                  "inputs on the prompt: "
                  f"sparsity {st['sparsity']:.1%}, {st['spikes_per_neuron']:.2f} spikes per neuron, "
                  f"{st['silent_fraction']:.1%} silent")


if __name__ == "__main__":
    main()
