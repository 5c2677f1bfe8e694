"""Fake (meta) kernels and autograd formulas, registered once for every sbops op.

The schemas live in csrc/ops.cpp; backends register device kernels.  Everything here is
device-independent: fakes give output metadata for torch.compile / FakeTensor, and the autograd
formulas call the *_bwd ops, so forward and backward both trace as ops.

Inputs may have any strides; every output (and gradient) is contiguous, so the fakes allocate
with `_like` (new_empty of the shape) rather than torch.empty_like, which would copy the strides
of a dense permuted input.
"""
from __future__ import annotations

import math
from typing import List

import torch
from torch._subclasses.fake_tensor import is_fake
from torch.library import register_autograd, register_fake

from ._dispatch import op_names

lib = "sbops::"


def _empty(like: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    return like.new_empty((0,), dtype=dtype)


def _like(x: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor of x's shape, dtype and device."""
    return x.new_empty(x.shape)


_TWICE = set()   # ops registered with _register_first_order: differentiable once


def _register_first_order(op: str, backward, setup_context) -> None:
    """register_autograd for an op whose backward calls a *_bwd op that has no derivative itself.
    Plain backward (grad mode off inside it) gets the results as they are; under create_graph=True
    they keep a grad_fn (over the saved tensors and incoming gradients that require grad) whose
    backward raises, instead of PyTorch's fallback silently dropping the second derivative."""
    _TWICE.add(op)

    def first_order_backward(ctx, *grads):
        out = backward(ctx, *grads)
        if not torch.is_grad_enabled() or torch.compiler.is_compiling():
            return out
        sources = [t for t in (*ctx.saved_tensors, *grads) if isinstance(t, torch.Tensor) and t.requires_grad]
        if not sources or any(is_fake(t) for t in sources):
            return out
        return tuple(g if g is None or g.numel() == 0 else _NoGrad.apply(op, g, *sources) for g in out)

    register_autograd(lib + op, first_order_backward, setup_context=setup_context)


# ------------------------------------------------------------------ linear attention
@register_fake(lib + "linear_attn")
def _(q, k, v, g, scale, initial_state, cu_seqlens):
    B, T, H, _K = q.shape
    HKV, K, V = k.shape[2], k.shape[3], v.shape[3]
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return q.new_empty((B, T, H, V)), q.new_empty((N, HKV, K, V), dtype=torch.float32)


@register_fake(lib + "linear_attn_bwd")
def _(q, k, v, g, scale, initial_state, cu_seqlens, grad_o, grad_final_state):
    dg = _like(g) if g is not None else _empty(q)
    dh0 = _like(initial_state) if initial_state is not None else _empty(q)
    return _like(q), _like(k), _like(v), dg, dh0


def _la_setup(ctx, inputs, output):
    q, k, v, g, scale, initial_state, cu_seqlens = inputs
    ctx.save_for_backward(q, k, v, g, initial_state, cu_seqlens)
    ctx.scale = scale


def _la_backward(ctx, grad_o, grad_final_state):
    q, k, v, g, initial_state, cu_seqlens = ctx.saved_tensors
    dq, dk, dv, dg, dh0 = torch.ops.sbops.linear_attn_bwd(
        q, k, v, g, ctx.scale, initial_state, cu_seqlens, grad_o.contiguous(),
        None if grad_final_state is None else grad_final_state.contiguous())
    return (dq, dk, dv, None if g is None else dg, None,
            None if initial_state is None else dh0, None)


_register_first_order("linear_attn", _la_backward, _la_setup)


@register_fake(lib + "linear_attn_decode")
def _(q, k, v, g, state, state_indices, scale):
    return q.new_empty((q.shape[0], q.shape[1], v.shape[2]))


# ------------------------------------------------------------------ ops without a gradient
# The decode ops are inference steps: their outputs keep a grad_fn when an input requires grad
# (so the graph stays connected), but backward through them raises, instead of PyTorch's
# fallback silently returning no gradient.
_NOT_DIFFERENTIABLE = {
    "linear_attn_decode": "use sbops.linear_attn (chunked prefill) for training",
    "swa_decode": "use sbops.swa_attn for training",
    "swa_cache_write": "the cache it writes carries no gradient to k, v or the overwritten rows; "
                       "use sbops.swa_attn for training",
}


def _not_differentiable_msg(op: str) -> str:
    if op in _TWICE:
        return (f"sbops.{op} is differentiable once: its backward has no derivative of its own (double "
                f"backward, e.g. a gradient penalty or a Hessian-vector product, is not implemented)")
    return f"sbops.{op} is not differentiable (an inference-only op); {_NOT_DIFFERENTIABLE[op]}"


@torch.library.custom_op("sbops_py::not_differentiable", mutates_args=())
def _not_differentiable(grad: torch.Tensor, op: str, shape: List[int], dtype: torch.dtype) -> torch.Tensor:
    """Raises.  A backward graph traced through a non-differentiable op computes an input's gradient
    with it, so the compiled backward fails when it runs (the compiler cannot fold or move it)."""
    raise RuntimeError(_not_differentiable_msg(op))


@_not_differentiable.register_fake
def _(grad, op, shape, dtype):
    return grad.new_empty(shape, dtype=dtype)


def _raise_backward(op: str, grads, metas, needs_input_grad):
    """Backward of a non-differentiable op: raise, or, while torch.compile traces the joint graph
    (built whether or not backward ever runs), trace a call that raises when the backward runs."""
    g = next((t for t in grads if isinstance(t, torch.Tensor)), None)
    if g is None or not is_fake(g):
        raise RuntimeError(_not_differentiable_msg(op))
    out = [None] * len(metas)
    i = next(i for i, (m, need) in enumerate(zip(metas, needs_input_grad)) if need and m is not None)
    out[i] = torch.ops.sbops_py.not_differentiable(g, op, list(metas[i][0]), metas[i][1])
    return tuple(out)


def _metas(inputs):
    return [(t.shape, t.dtype) if isinstance(t, torch.Tensor) else None for t in inputs]


def _swa_decode_setup(ctx, inputs, output):
    ctx.metas = _metas(inputs)


def _swa_decode_backward(ctx, grad_o):
    return _raise_backward("swa_decode", (grad_o,), ctx.metas, ctx.needs_input_grad)


class _NoGrad(torch.autograd.Function):
    """Passes `out` through with a grad_fn connected to `inputs` whose backward raises."""

    @staticmethod
    def forward(ctx, op, out, *inputs):
        ctx.op, ctx.metas = op, [None, None] + _metas(inputs)
        return out.view_as(out)

    @staticmethod
    def backward(ctx, *grads):
        return _raise_backward(ctx.op, grads, ctx.metas, ctx.needs_input_grad)


_impl_lib = torch.library.Library("sbops", "IMPL")   # kept alive: holds the Autograd kernel below


def _linear_attn_decode_autograd(q, k, v, g, state, state_indices, scale):
    # register_autograd refuses ops that mutate an argument (state), so this one gets an Autograd kernel
    with torch._C._AutoDispatchBelowAutograd():
        out = torch.ops.sbops.linear_attn_decode.default(q, k, v, g, state, state_indices, scale)
    if torch.is_grad_enabled():
        inputs = [t for t in (q, k, v, g) if t is not None and t.requires_grad]
        if inputs:
            out = _NoGrad.apply("linear_attn_decode", out, *inputs)
    return out


_impl_lib.impl("linear_attn_decode", _linear_attn_decode_autograd, "Autograd")


class _NoGradWrite(torch.autograd.Function):
    """Marks a tensor written in place as modified, with a grad_fn whose backward raises.  One
    tensor per call: autograd cannot rebase more than one output when an input is a view."""

    @staticmethod
    def forward(ctx, op, written, *inputs):
        ctx.mark_dirty(written)
        ctx.op, ctx.metas = op, [None] + _metas((written,) + inputs)
        return written

    @staticmethod
    def backward(ctx, *grads):
        return _raise_backward(ctx.op, grads, ctx.metas, ctx.needs_input_grad)


def mark_cache_write(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    """After sbops.swa_cache_write with grad mode on and k, v or a cache requiring grad: the caches
    get a grad_fn whose backward raises (without it, PyTorch leaves a cache written from
    grad-requiring k/v with no grad_fn, so k and v silently get no gradient, and a grad-requiring
    cache keeps its old grad_fn, so the overwritten rows' gradient flows to the values they
    replaced).  The node's input is a detached stand-in, so the graph of k and v (a decode step's
    activations) is not kept alive by the cache.  A cache autograd cannot record an in-place write
    into (an inference tensor, a view made under no_grad) keeps no history (a leaf requiring grad
    is refused by the op itself, at ADInplaceOrView),
    with one warning, as before this guard.  Not applied while torch.compile traces (Dynamo cannot
    trace this node's backward): a compiled write keeps the caches' history as it was."""
    if torch.compiler.is_compiling():
        return
    stub = k_cache.new_zeros(()).requires_grad_()
    try:
        _NoGradWrite.apply("swa_cache_write", k_cache, stub)
        _NoGradWrite.apply("swa_cache_write", v_cache, stub)
    except RuntimeError as e:
        import warnings
        warnings.warn(f"sbops.swa_cache_write: the cache cannot record the write for autograd ({e}); "
                      f"backward through it will not see the new rows", stacklevel=3)


# ------------------------------------------------------------------ in-place ops: version counters
def mutated_args(op: str) -> List[tuple]:
    """(position, name) of each argument op's schema marks written (Tensor(a!))."""
    schema = getattr(torch.ops.sbops, op).default._schema
    return [(i, a.name) for i, a in enumerate(schema.arguments)
            if a.alias_info is not None and a.alias_info.is_write]


_after_inplace_or_view = torch._C._after_ADInplaceOrView_keyset


def _inplace_or_view_kernel(op: str, written: List[tuple]):
    """What PyTorch's own in-place ops (and torch.library.custom_op) do at ADInplaceOrView: bump the
    version counter of every written argument, so backward through a graph that saved one of them
    raises "modified by an inplace operation" instead of silently using the new values; and, with
    grad mode on, refuse to write into a leaf that requires grad (or a view of one), by name."""
    overload = getattr(torch.ops.sbops, op).default

    def kernel(keyset, *args, **kwargs):
        ts = [args[i] if i < len(args) else kwargs.get(name) for i, name in written]
        if torch.is_grad_enabled():
            for (_, name), t in zip(written, ts):
                if t is None or not t.requires_grad:
                    continue
                base = t._base if t._is_view() else None
                if t.is_leaf or (base is not None and base.is_leaf and base.requires_grad):
                    raise RuntimeError(
                        f"sbops.{op}: {name} is {'a leaf' if t.is_leaf else 'a view of a leaf'} tensor that "
                        f"requires grad, and {op} writes it in place (torch refuses in-place ops on such "
                        f"tensors); pass {name}.detach() or call it under torch.no_grad()")
        out = overload.redispatch(keyset & _after_inplace_or_view, *args, **kwargs)
        torch.autograd.graph.increment_version([t for t in ts if t is not None])
        return out

    return kernel


for _op in op_names():
    if _written := mutated_args(_op):
        _impl_lib.impl(_op, _inplace_or_view_kernel(_op, _written), "ADInplaceOrView", with_keyset=True)


# ------------------------------------------------------------------ sliding-window attention
@register_fake(lib + "swa_attn")
def _(q, k, v, window, scale, cu_seqlens, sink_k, sink_v):
    B, T, H, _D = q.shape
    return q.new_empty((B, T, H, v.shape[3])), q.new_empty((B, T, H), dtype=torch.float32)


@register_fake(lib + "swa_attn_bwd")
def _(q, k, v, o, lse, grad_o, grad_lse, window, scale, cu_seqlens, sink_k, sink_v):
    dsk = _like(sink_k) if sink_k is not None else _empty(q)   # absent: empty float32, as the kernels
    dsv = _like(sink_v) if sink_v is not None else _empty(q)
    return _like(q), _like(k), _like(v), dsk, dsv


def _swa_setup(ctx, inputs, output):
    q, k, v, window, scale, cu_seqlens, sink_k, sink_v = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, cu_seqlens, sink_k, sink_v)
    ctx.window, ctx.scale = window, scale


def _swa_backward(ctx, grad_o, grad_lse):
    q, k, v, o, lse, cu_seqlens, sink_k, sink_v = ctx.saved_tensors
    dq, dk, dv, dsk, dsv = torch.ops.sbops.swa_attn_bwd(
        q, k, v, o, lse, grad_o.contiguous(), None if grad_lse is None else grad_lse.contiguous(),
        ctx.window, ctx.scale, cu_seqlens, sink_k, sink_v)
    return (dq, dk, dv, None, None, None,
            None if sink_k is None else dsk, None if sink_v is None else dsv)


_register_first_order("swa_attn", _swa_backward, _swa_setup)


@register_fake(lib + "swa_decode")
def _(q, k_cache, v_cache, seq_lens, window, scale, slot_indices, sink_k=None, sink_v=None):
    return _like(q)


register_autograd(lib + "swa_decode", _swa_decode_backward, setup_context=_swa_decode_setup)


@register_fake(lib + "swa_cache_write")
def _(k, v, k_cache, v_cache, positions, slot_indices):
    return None


# ------------------------------------------------------------------ spike coding
@register_fake(lib + "spike_encode")
def _(x, k, out_dtype):
    return x.new_empty(x.shape, dtype=out_dtype), x.new_empty((*x.shape[:-1], 1), dtype=torch.float32)


def _se_setup(ctx, inputs, output):
    x, k, out_dtype = inputs
    ctx.save_for_backward(x)
    ctx.k = k


def _se_backward(ctx, grad_counts, grad_vth):
    # counts are integers (no gradient); vth = clamp(mean|x| / k, 1e-5, 1e4) per row (float32 math)
    (x,) = ctx.saved_tensors
    if grad_vth is None:
        return None, None, None
    xf = x.to(torch.float32)
    raw = xf.abs().mean(-1, keepdim=True) / ctx.k
    inside = (raw >= 1e-5) & (raw <= 1e4)            # torch.clamp's gradient rule
    gx = torch.where(inside, grad_vth.to(torch.float32), 0.0) * torch.sign(xf) / (ctx.k * x.shape[-1])
    return gx.to(x.dtype), None, None


register_autograd(lib + "spike_encode", _se_backward, setup_context=_se_setup)


@register_fake(lib + "spike_quant")
def _(x, k):
    return _like(x)


def _sq_setup(ctx, inputs, output):
    pass


def _sq_backward(ctx, grad):
    return grad, None   # straight-through estimator: d x_hat / d x = identity


register_autograd(lib + "spike_quant", _sq_backward, setup_context=_sq_setup)


@register_fake(lib + "spike_linear")
def _(x, weight_q, weight_scale, k, bias, group_size):
    return x.new_empty((x.shape[0], weight_q.shape[0]))


def _sl_setup(ctx, inputs, output):
    x, weight_q, weight_scale, k, bias, group_size = inputs
    ctx.save_for_backward(weight_q, weight_scale)
    ctx.group_size, ctx.x_dtype = group_size, x.dtype
    ctx.bias_dtype = None if bias is None else bias.dtype


def _sl_backward(ctx, grad):
    # straight-through, as spike_quant: y ~ x_hat @ W^T with d x_hat / d x = identity
    weight_q, weight_scale = ctx.saved_tensors
    N, K = weight_q.shape
    acc = torch.promote_types(ctx.x_dtype, torch.float32)   # float32 accumulation, float64 for float64 x
    w = weight_q.to(acc)
    if ctx.group_size > 0:
        w = (w.view(N, K // ctx.group_size, ctx.group_size) * weight_scale.to(acc)[..., None]).view(N, K)
    else:
        w = w * weight_scale.to(acc)[:, None]
    gx = (grad.to(acc) @ w).to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
    gb = (grad.to(torch.promote_types(ctx.bias_dtype, torch.float32)).sum(0).to(ctx.bias_dtype)
          if ctx.bias_dtype is not None and ctx.needs_input_grad[4] else None)
    return gx, None, None, None, gb, None


register_autograd(lib + "spike_linear", _sl_backward, setup_context=_sl_setup)


@register_fake(lib + "spike_expand")
def _(counts, mode, T):
    return counts.new_empty((T, *counts.shape), dtype=torch.int8)


@register_fake(lib + "spike_collapse")
def _(trains, mode):
    return trains.new_empty(trains.shape[1:], dtype=torch.int32)


@register_fake(lib + "spike_stats")
def _(counts, max_abs):
    return counts.new_empty((max_abs + 1,), dtype=torch.int64)


# ------------------------------------------------------------------ MoE routing
@register_fake(lib + "topk_gating")
def _(logits, k, scoring, renormalize, bias, num_groups, topk_groups, scaling):
    T = logits.shape[0]
    return logits.new_empty((T, k), dtype=torch.float32), logits.new_empty((T, k), dtype=torch.int32)


@register_fake(lib + "topk_gating_bwd")
def _(grad_weights, logits, ids, scoring, renormalize, scaling):
    return _like(logits)


def _tg_setup(ctx, inputs, output):
    logits, k, scoring, renormalize, bias, num_groups, topk_groups, scaling = inputs
    ctx.save_for_backward(logits, output[1])
    ctx.scoring, ctx.renormalize, ctx.scaling = scoring, renormalize, scaling


def _tg_backward(ctx, grad_weights, grad_ids):
    logits, ids = ctx.saved_tensors
    dlogits = torch.ops.sbops.topk_gating_bwd(grad_weights.contiguous(), logits, ids, ctx.scoring,
                                              ctx.renormalize, ctx.scaling)
    return dlogits, None, None, None, None, None, None, None


_register_first_order("topk_gating", _tg_backward, _tg_setup)


@register_fake(lib + "moe_permute")
def _(x, ids, num_experts):
    T, k = ids.shape
    return (x.new_empty((T * k, x.shape[1])), x.new_empty((num_experts + 1,), dtype=torch.int64),
            x.new_empty((T, k), dtype=torch.int32))


@register_fake(lib + "moe_permute_bwd")
def _(grad_x_perm, row_map):
    return grad_x_perm.new_empty((row_map.shape[0], grad_x_perm.shape[1]))


def _mp_setup(ctx, inputs, output):
    ctx.save_for_backward(output[2])


def _mp_backward(ctx, grad_x_perm, grad_offsets, grad_row_map):
    (row_map,) = ctx.saved_tensors
    return torch.ops.sbops.moe_permute_bwd(grad_x_perm.contiguous(), row_map), None, None


_register_first_order("moe_permute", _mp_backward, _mp_setup)


@register_fake(lib + "moe_unpermute")
def _(y_perm, row_map, weights):
    return y_perm.new_empty((row_map.shape[0], y_perm.shape[1]))


@register_fake(lib + "moe_unpermute_bwd")
def _(grad_y, y_perm, row_map, weights):
    return _like(y_perm), _like(weights)


def _mu_setup(ctx, inputs, output):
    y_perm, row_map, weights = inputs
    ctx.save_for_backward(y_perm, row_map, weights)


def _mu_backward(ctx, grad_y):
    y_perm, row_map, weights = ctx.saved_tensors
    dy_perm, dw = torch.ops.sbops.moe_unpermute_bwd(grad_y.contiguous(), y_perm, row_map, weights)
    return dy_perm, None, dw


_register_first_order("moe_unpermute", _mu_backward, _mu_setup)


@register_fake(lib + "moe_align_block_size")
def _(ids, num_experts, block_size):
    n = ids.numel()
    max_padded = n + num_experts * (block_size - 1)
    return (ids.new_empty((max_padded,), dtype=torch.int32),
            ids.new_empty((math.ceil(max_padded / block_size),), dtype=torch.int32),
            ids.new_empty((1,), dtype=torch.int32))


@register_fake(lib + "expert_counts")
def _(ids, num_experts):
    return ids.new_empty((num_experts,), dtype=torch.int64)
