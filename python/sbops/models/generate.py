"""generate(): chunked packed prefill, slot-indexed continuous batching, CUDA-graph decode, sampling."""
from __future__ import annotations

import contextlib
from collections import deque
from typing import Callable, List, NamedTuple, Optional, Sequence, Union

import torch

import sbops

from . import generate_args as A
from .graphs import DecodeGraphs, graphs_supported
from .sampling import check_sampling, select_next
from .spikingbrain import ModelCache

_token_ids = A.token_ids   # the old private names

# Tokens per prefill chunk.  7B shape on the H200 (session 12), TTFT at 1M tokens: 8192 -> 24.69 s (1.26 GiB
# peak extra memory), 16384 -> 24.06 s (2.42 GiB), 32768 -> 23.88 s (4.72 GiB): 16384 keeps most of the gain
# (fewer dummy window queries per token in the SWA layers, fewer launches) at half the memory of 32768.
DEFAULT_PREFILL_CHUNK = 16384
# Where the linear layers run on 8-bit weights (W8ASpike) their GEMMs take about half the time, so the per-chunk
# costs (launches, the SWA layers' cached window of keys) weigh twice as much.  Session 43 (H100, the 7B shape with
# int8 per-channel weights, TTFT at 1M, alternated twice): 16384 -> 14.105 / 14.093 s (2.37 GiB peak extra memory),
# 32768 -> 13.958 / 13.964 s (4.63 GiB), -1.0%.
DEFAULT_PREFILL_CHUNK_8BIT = 32768


def default_prefill_chunk(model) -> int:
    """generate()'s prefill chunk when none is given: DEFAULT_PREFILL_CHUNK_8BIT for a model with a linear layer that
    runs on its 8-bit weights at inference (a SpikeLinear with k and an 8-bit weight_quant), else DEFAULT_PREFILL_CHUNK."""
    from ..nn import SpikeLinear
    eight = any(isinstance(m, SpikeLinear) and m._has_8bit_path() for m in model.modules())
    return DEFAULT_PREFILL_CHUNK_8BIT if eight else DEFAULT_PREFILL_CHUNK


class GenerateOutput(NamedTuple):
    sequences: Union[torch.Tensor, List[torch.Tensor]]  # [B, T + n] (tensor input) or a list of 1-D tensors
    scores: Union[torch.Tensor, List[torch.Tensor]]     # the raw logits that chose each generated token


def _prefill(model, cache: ModelCache, prompts: Sequence[torch.Tensor], slots: Sequence[int], chunk: int,
             on_chunk: Optional[Callable[[int], None]] = None, held: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Feed the prompts into their cache slots in packed chunks of at most `chunk` tokens (all
    sequences together); the lm_head runs only on each prompt's last token.  The slots must be empty
    (ModelCache.reset), or hold held[i] tokens that prompt i continues.  Host metadata only: no device
    reads.  on_chunk(tokens) follows each chunk's launch.  -> logits [n, vocab]."""
    held = [0] * len(prompts) if held is None else list(held)
    dev = cache.seq_lens.device
    done = [0] * len(prompts)
    last = [None] * len(prompts)
    while any(d < p.numel() for d, p in zip(done, prompts)):
        budget, take = chunk, []
        for i, p in enumerate(prompts):
            if budget == 0:
                break
            t = min(p.numel() - done[i], budget)
            if t > 0:
                take.append((i, t))
                budget -= t
        ids = torch.cat([prompts[i][done[i]:done[i] + t] for i, t in take]).to(dev, non_blocking=True)[None]
        ends = torch.tensor([t for _, t in take]).cumsum(0)
        finishing = [j for j, (i, t) in enumerate(take) if done[i] + t == prompts[i].numel()]
        keep = (ends[finishing] - 1).to(dev, non_blocking=True)
        cu = None if len(take) == 1 else [0] + ends.tolist()
        logits = model(ids, cache=cache, logits_to_keep=keep, cu_seqlens=cu, slot_indices=[slots[i] for i, _ in take],
                       start_positions=[held[i] + done[i] for i, _ in take]).logits[0]
        for row, j in enumerate(finishing):
            last[take[j][0]] = logits[row]
        for i, t in take:
            done[i] += t
        if on_chunk is not None:
            on_chunk(sum(t for _, t in take))
    return torch.stack(last)


@torch.no_grad()
def generate(model, input_ids, max_new_tokens: int, *, do_sample: bool = False, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, generator: Optional[torch.Generator] = None,
             eos_token_id: Union[None, int, Sequence[int]] = None, prefill_chunk_size: Optional[int] = None,
             cache: Optional[ModelCache] = None, output_scores: bool = False,
             attention_mask: Optional[torch.Tensor] = None, max_batch_size: Optional[int] = None,
             cuda_graphs: Optional[bool] = None, pad_token_id: Optional[int] = None, streamer=None,
             progress: Optional[Callable[[str, int, int], None]] = None, reuse_cache: bool = False):
    """Generate up to max_new_tokens tokens after each prompt.

    input_ids: [B, T] prompts of equal length -> sequences [B, T + n]; or a list of 1-D prompts of
        any lengths -> a list of 1-D tensors (prompt + generated tokens); or [B, T] with attention_mask
        (padding, left or right) -> [B, T + n] as Hugging Face returns it: the input rows as given
        (padding kept) followed by the new tokens; the masked-out tokens are dropped from the model's
        input.  Prompts are packed (cu_seqlens), never padded.  input_ids (integer tensors) must be on
        the model's device: nothing is moved.  max_new_tokens: an int >= 0.
    Prefill: chunks of at most prefill_chunk_size tokens over all joining prompts (default: default_prefill_chunk(model),
        16384, or 32768 where the linear layers run on 8-bit weights), so its memory is bounded whatever the prompt
        length; logits only at each prompt's last token.
    Batching: sequence i uses a cache slot; at most max_batch_size (default: all) run at once, and
        a finished sequence leaves the batch and frees its slot for the next waiting prompt.
    Decode: one token per running sequence per step.  On a CUDA device the step is captured in CUDA
        graphs (bucketed batch sizes) unless cuda_graphs=False; one host sync per step (the new
        tokens, to check stops).  The ops' data checks are off on CUDA.
    Sampling: greedy by default (temperature / top_k / top_p are then ignored, with a warning when set);
        do_sample with temperature (> 0), top_k (0 = off), top_p (in [0, 1]; 1 = off), drawn with
        `generator` (a torch.Generator on the model's device) for reproducibility.
    eos_token_id: an int or a list; a sequence stops after emitting one.  None (default): model.config's
        eos_token_id (from_pretrained reads it from config.json / generation_config.json), as Hugging
        Face; [] never stops early.  With a [B, T] tensor input, finished rows are padded with
        pad_token_id (default: model.config.pad_token_id, else the first eos id, else 0).
    cache: optional ModelCache (model.new_cache) with enough slots: the batch size, plus one
        scratch slot for the padding rows of CUDA graphs.  It is reset here.
    output_scores: return GenerateOutput(sequences, scores) with the raw logits of every step:
        [B, n, vocab] (tensor input; rows after a sequence stopped are 0) or a list of [n_i, vocab].
    streamer: Hugging Face's streamer protocol (transformers.TextStreamer works as is), one sequence
        only: streamer.put(prompt [1, T] on the CPU) first, streamer.put(token [1]) for each new token
        as it is chosen, streamer.end() when the sequence stops.
    progress: progress(stage, done, total) on long work: ("prefill", prompt tokens issued, all prompt
        tokens) after each prefill chunk is launched, ("decode", tokens generated, n_prompts *
        max_new_tokens) after each step (a bound: sequences that stop early leave it unreached).
    reuse_cache: continue what `cache` holds instead of resetting it (a conversation's next turn at
        constant memory): sequence i continues slot i, and input_ids are each sequence's whole text so
        far, of which the cache.seq_lens[i] tokens already held are skipped (as Hugging Face skips the
        tokens in past_key_values); the result is that whole text plus the new tokens.  After a
        generate() call the cache holds every token but the last generated one.  A cache filled by a
        call whose max_batch_size was below its number of prompts is refused (later sequences took
        freed slots, so slot i no longer holds sequence i).
    """
    device = model.lm_head.weight.device
    prompts, as_list = A.prompts(input_ids, attention_mask, device)
    max_new_tokens = A.as_int(max_new_tokens, "max_new_tokens", 0)
    do_sample = A.as_flag(do_sample, "do_sample")
    temperature, top_k, top_p = check_sampling(do_sample, temperature, top_k, top_p)
    eos, pad = A.default_token_ids(model, eos_token_id, pad_token_id)
    chunk = A.as_int(default_prefill_chunk(model) if prefill_chunk_size is None else prefill_chunk_size,
                     "prefill_chunk_size", 1, " (or None: the default)")
    max_batch_size = A.optional_int(max_batch_size, "max_batch_size", 1, " (or None: all prompts at once)")
    output_scores, reuse_cache = A.as_flag(output_scores, "output_scores"), A.as_flag(reuse_cache, "reuse_cache")
    if cuda_graphs is not None:
        cuda_graphs = A.as_flag(cuda_graphs, "cuda_graphs")
    if cache is not None and not isinstance(cache, ModelCache):
        raise TypeError(f"cache must be a ModelCache (model.new_cache) or None, got {type(cache).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    n_seq = len(prompts)
    if streamer is not None:
        if not (callable(getattr(streamer, "put", None)) and callable(getattr(streamer, "end", None))):
            raise TypeError(f"streamer must have put(tokens) and end() methods (Hugging Face's streamer "
                            f"protocol), got {type(streamer).__name__}")
        if n_seq != 1:
            raise ValueError(f"streamer takes the tokens of one sequence (as Hugging Face's TextStreamer), "
                             f"got {n_seq} prompts")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be a callable progress(stage, done, total), got {type(progress).__name__}")
    if reuse_cache and (cache is None or (max_batch_size is not None and max_batch_size < n_seq)):
        raise ValueError("reuse_cache=True continues the sequences of the cache passed as cache=, all at once "
                         "(sequence i in slot i): pass that cache, and no max_batch_size below the number of prompts")
    vocab = model.lm_head.weight.shape[0]
    width = max(1, n_seq if max_batch_size is None else min(max_batch_size, n_seq))
    use_graphs = graphs_supported(model, device) is None if cuda_graphs is None else cuda_graphs
    if use_graphs and graphs_supported(model, device) is not None:
        raise ValueError(f"cuda_graphs=True but the decode step cannot be captured: {graphs_supported(model, device)}")
    need = width + (1 if use_graphs else 0)
    held = [0] * n_seq
    if cache is not None and n_seq:
        if cache.num_slots < need:
            raise ValueError(f"the cache has {cache.num_slots} slots but this call needs {need} "
                             f"({width} sequences{' + 1 scratch slot for CUDA graphs' if use_graphs else ''})")
        cache.check_fits(model)
        reach = max(p.numel() for p in prompts) + max_new_tokens - 1   # tokens a slot holds at the last step
        for i, (c, layer) in enumerate(zip(cache.layers, model.model.layers)):
            sm = getattr(c, "softmax", c)
            if hasattr(sm, "k") and getattr(layer.self_attn, "window", 0) < 0 and sm.rows < reach:
                raise ValueError(f"the cache's full-attention layer {i} holds {sm.rows} tokens per slot but a sequence "
                                 f"here reaches {reach}: allocate it with model.new_cache(..., max_length={reach})")
        if reuse_cache:
            if not cache.slots_in_order:
                raise ValueError("reuse_cache: the call that filled this cache ran with max_batch_size below its "
                                 "number of prompts, so later sequences took freed slots and slot i no longer holds "
                                 "sequence i; continue from a cache filled without max_batch_size, or pass "
                                 "reuse_cache=False")
            held = cache.seq_lens[:n_seq].tolist()   # one host read
            for i, (p, h) in enumerate(zip(prompts, held)):
                if h >= p.numel():
                    raise ValueError(f"reuse_cache: slot {i} holds {h} tokens but input {i} has {p.numel()}: give "
                                     f"each sequence's whole text so far, with at least one token the cache does not hold")
    if max_new_tokens == 0 or n_seq == 0:   # after every check
        if cache is not None and not reuse_cache:
            cache.reset()                    # as any call without reuse_cache does
        if streamer is not None:
            streamer.put(prompts[0][None].cpu())
            streamer.end()
        seqs = [p.clone() for p in prompts]
        empty = [p.new_zeros(0, vocab, dtype=torch.float32) for p in prompts]
        if not as_list:
            seqs, empty = input_ids.clone(), input_ids.new_zeros(n_seq, 0, vocab, dtype=torch.float32)
        return GenerateOutput(seqs, empty) if output_scores else seqs
    if cache is None:
        cache = model.new_cache(need, max_length=max(p.numel() for p in prompts) + max_new_tokens)
    if not reuse_cache:
        cache.reset()
    graphs = DecodeGraphs(model, cache, cache.num_slots - 1, width) if use_graphs else None
    checks = sbops.data_checks(False) if device.type == "cuda" else contextlib.nullcontext()

    tokens: List[List[int]] = [[] for _ in range(n_seq)]
    scores: List[List[torch.Tensor]] = [[] for _ in range(n_seq)]
    pending = deque(range(n_seq))
    free = list(range(width))
    active: List[tuple] = []  # (sequence, slot), in batch order
    owner = {}                # slot -> the last sequence that ran in it
    host_lens = cache.host_lens()

    fed, n_prompt = [0], sum(p.numel() - h for p, h in zip(prompts, held))
    generated, bound = [0], n_seq * max_new_tokens

    def on_chunk(n: int) -> None:
        fed[0] += n
        progress("prefill", fed[0], n_prompt)

    def emit(rows: List[tuple], logits: torch.Tensor) -> None:
        nxt = select_next(logits, do_sample, temperature, top_k, top_p, generator).tolist()
        for (seq, slot), tok, row in zip(rows, nxt, range(len(rows))):
            tokens[seq].append(int(tok))
            if streamer is not None:
                streamer.put(torch.tensor([int(tok)], dtype=prompts[seq].dtype))
            if output_scores:
                scores[seq].append(logits[row].float().clone())
            if int(tok) in eos or len(tokens[seq]) >= max_new_tokens:
                free.append(slot)
            else:
                active.append((seq, slot))
        generated[0] += len(rows)
        if progress is not None:
            progress("decode", generated[0], bound)

    if streamer is not None:  # after every argument check: a failed call never leaves a streamer without end()
        streamer.put(prompts[0][None].cpu())
    try:
        with checks:
            while pending or active:
                joining = []
                while pending and free:
                    joining.append((pending.popleft(), free.pop(0)))
                    owner[joining[-1][1]] = joining[-1][0]
                if joining:
                    js = [slot for _, slot in joining]
                    if not reuse_cache:
                        cache.reset(js)
                    logits = _prefill(model, cache, [prompts[s][held[s]:] for s, _ in joining], js, chunk,
                                      on_chunk if progress is not None else None, [held[s] for s, _ in joining])
                    emit(joining, logits)
                if not active:
                    continue
                rows, active[:] = list(active), []
                ids = torch.tensor([tokens[s][-1] for s, _ in rows]).to(device, non_blocking=True)
                slots = torch.tensor([slot for _, slot in rows]).to(device, non_blocking=True)
                if graphs is not None:
                    logits = graphs.step(ids, slots)
                else:
                    logits = model(ids[:, None], cache=cache, slot_indices=slots).logits[:, 0]
                emit(rows, logits)
    finally:
        if streamer is not None:
            streamer.end()

    # what each slot holds now, for the cache's host bookkeeping (its decode steps used device slot indices)
    for slot, seq in owner.items():
        host_lens[slot] = prompts[seq].numel() + len(tokens[seq]) - 1
    cache.slots_in_order = all(slot == seq for slot, seq in owner.items())
    if graphs is not None:
        host_lens[graphs.scratch] = 0
    cache._set_host_lens(host_lens)

    if as_list:
        outs = [torch.cat([p, torch.tensor(t, dtype=p.dtype, device=device)]) for p, t in zip(prompts, tokens)]
        if not output_scores:
            return outs
        return GenerateOutput(outs, [torch.stack(s) if s else torch.zeros(0, vocab, device=device) for s in scores])
    n, T = max(len(t) for t in tokens), input_ids.shape[1]
    seqs = torch.full((n_seq, T + n), pad, dtype=input_ids.dtype, device=device)
    seqs[:, :T] = input_ids        # as given: with attention_mask, its padding stays where it was
    for i, t in enumerate(tokens):
        seqs[i, T:T + len(t)] = torch.tensor(t, dtype=input_ids.dtype).to(device, non_blocking=True)
    if not output_scores:
        return seqs
    sc = torch.zeros(n_seq, n, vocab, device=device)
    for i, s in enumerate(scores):
        if s:
            sc[i, :len(s)] = torch.stack(s)
    return GenerateOutput(seqs, sc)
