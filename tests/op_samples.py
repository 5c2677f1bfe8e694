"""One small, valid sample call per registered op (the raw torch.ops.sbops.* schema arguments).

Shared by the opcheck tests and usable on any device.  Differentiable inputs require grad so the
autograd registration is exercised too.
"""
import torch
import torch.nn.functional as F


def samples(device="cpu", dtype=torch.float32, head_dim=None):
    """head_dim: 16 on the CPU (any size works there), 64 elsewhere: the GPU attention kernels take
    head dims 64 and 128 only and reject others with an error, which opcheck would report as a failure."""
    def t(*s, grad=False, scale=1.0):
        x = (torch.randn(*s, device=device, dtype=dtype) * scale)
        return x.requires_grad_(grad)

    K = head_dim or (16 if torch.device(device).type == "cpu" else 64)
    B, T, H, HKV = 1, 9, 4, 2
    q, k, v = t(B, T, H, K, grad=True), t(B, T, HKV, K, grad=True, scale=0.25), t(B, T, HKV, K, grad=True)
    g = F.logsigmoid(torch.randn(B, T, HKV, K, device=device)).to(dtype).requires_grad_()
    gh = F.logsigmoid(torch.randn(B, T, HKV, device=device)).to(dtype).requires_grad_()
    h0 = torch.randn(B, HKV, K, K, device=device, requires_grad=True)
    cu = torch.tensor([0, 4, 9], device=device, dtype=torch.int32)
    sk, sv = t(3, HKV, K, grad=True), t(3, HKV, K, grad=True)
    state = torch.randn(3, HKV, K, K, device=device)
    kc, vc = t(3, 6, HKV, K), t(3, 6, HKV, K)
    idx = torch.tensor([2, 0], device=device)
    logits = t(11, 16, grad=True)
    ids = torch.randint(-1, 8, (11, 2), device=device, dtype=torch.int32)
    x = t(11, 8, grad=True)
    row_map = torch.randperm(22, device=device).view(11, 2).to(torch.int32)
    row_map[0, 1] = -1
    w = torch.rand(11, 2, device=device, requires_grad=True)
    counts = torch.randint(-7, 8, (5, 6), device=device, dtype=torch.int8)
    ops = torch.ops.sbops
    base = [
        (ops.linear_attn, (q, k, v, g, 0.25, h0, None)),
        (ops.linear_attn, (q, k, v, gh, 0.25, None, None)),
        (ops.linear_attn, (q, k, v, None, 0.25, torch.randn(2, HKV, K, K, device=device), cu)),
        (ops.linear_attn_decode, (q[:, 0].squeeze(0).expand(2, H, K).contiguous().detach(),
                                  k[0, :2].detach().contiguous(), v[0, :2].detach().contiguous(),
                                  g[0, :2].detach().contiguous(), state, idx, 0.25)),
        (ops.swa_attn, (q, k, v, 3, 0.25, None, sk, sv)),
        (ops.swa_attn, (q, k, v, -1, 0.25, cu, None, None)),
        (ops.swa_decode, (t(2, H, K), kc, vc, torch.tensor([5, 2], device=device), 4, 0.25, idx)),
        (ops.swa_decode, (t(2, H, K), kc, vc, torch.tensor([9, 1], device=device), 4, 0.25, None,
                          sk.detach(), sv.detach())),
        (ops.swa_cache_write, (t(2, HKV, K), t(2, HKV, K), kc, vc, torch.tensor([7, 1], device=device), idx)),
        (ops.spike_encode, (t(4, 32), 3.0, torch.int8)),
        (ops.spike_quant, (t(4, 32, grad=True), 3.0)),
        (ops.spike_expand, (counts, "bitwise", 4)),
        (ops.spike_expand, (counts.abs(), "binary", 8)),
        (ops.spike_collapse, (torch.randint(-1, 2, (3, 5, 6), device=device, dtype=torch.int8), "ternary")),
        (ops.spike_stats, (counts, 7)),
        (ops.spike_linear, (t(5, 256, grad=True), torch.randint(-127, 128, (16, 256), device=device, dtype=torch.int8),
                            torch.rand(16, 2, device=device) * 0.01, 3.0, t(16), 128)),
        (ops.spike_linear, (t(3, 128), torch.randint(-127, 128, (8, 128), device=device, dtype=torch.int8),
                            torch.rand(8, device=device) * 0.01, 2.0, None, 0)),
        (ops.topk_gating, (logits, 3, "softmax", True, None, 4, 2, 1.0)),
        (ops.topk_gating, (logits, 2, "sigmoid", False, torch.randn(16, device=device), 0, 0, 2.0)),
        (ops.moe_permute, (x, ids, 8)),
        (ops.moe_unpermute, (t(22, 8, grad=True), row_map, w)),
        (ops.moe_align_block_size, (ids, 8, 4)),
        (ops.expert_counts, (ids, 8)),
    ]
    return base + strided(base)


def _view_of(a, inplace):
    """A strided tensor with a's values: for tensors written in place an outer slice (unit last
    stride), else a column block of wider rows (a split of a fused projection) at an odd offset."""
    if a.dim() == 0:
        return a
    if inplace or a.dim() == 1:
        big = a.detach().new_zeros(a.shape[0], 2, *a.shape[1:])
        big[:, 1] = a.detach()
        v = big[:, 1]
    else:
        big = a.detach().new_zeros(*a.shape[:-1], a.shape[-1] + 3)
        big[..., 1:1 + a.shape[-1]] = a.detach()
        v = big[..., 1:1 + a.shape[-1]]
    return v.requires_grad_(a.requires_grad)


_INPLACE = {"linear_attn_decode": (4,), "swa_cache_write": (2, 3)}


def strided(cases):
    """One sample per op (its first) with every tensor argument replaced by a strided view."""
    out, seen = [], set()
    for op, args in cases:
        name = op._qualified_op_name.split("::")[-1]
        if name in seen:
            continue
        seen.add(name)
        keep = _INPLACE.get(name, ())
        out.append((op, tuple(_view_of(a, i in keep) if isinstance(a, torch.Tensor) else a
                              for i, a in enumerate(args))))
    return out


def backward_samples(device="cpu", dtype=torch.float32, head_dim=16, T=9):
    """One call per *_bwd op, its arguments made by running the forward op (no input requires grad:
    the backward ops are called by the autograd formulas, never differentiated themselves)."""
    ops = torch.ops.sbops
    gen = torch.Generator(device=device).manual_seed(0)

    def t(*s, dt=dtype):
        return torch.randn(*s, device=device, dtype=dt, generator=gen)

    B, H, HKV, K = 1, 4, 2, head_dim
    q, k, v = t(B, T, H, K), t(B, T, HKV, K) * 0.25, t(B, T, HKV, K)
    g = F.logsigmoid(t(B, T, HKV, K))
    cu = torch.tensor([0, 4, 9], device=device, dtype=torch.int32)
    h0 = t(2, HKV, K, K, dt=torch.float32)
    o, _ = ops.linear_attn(q, k, v, g, 0.25, h0, cu)
    sk, sv = t(3, HKV, K), t(3, HKV, K)
    so, lse = ops.swa_attn(q, k, v, 3, 0.25, None, sk, sv)
    logits = t(11, 16)
    _, ids = ops.topk_gating(logits, 3, "softmax", True, None, 0, 0, 1.0)
    x = t(11, 8)
    x_perm, _, row_map = ops.moe_permute(x, ids, 16)
    w = torch.rand(11, 3, device=device, generator=gen)
    return [
        (ops.linear_attn_bwd, (q, k, v, g, 0.25, h0, cu, t(*o.shape), t(2, HKV, K, K, dt=torch.float32))),
        (ops.linear_attn_bwd, (q, k, v, None, 0.25, None, None, t(*o.shape), None)),
        (ops.swa_attn_bwd, (q, k, v, so, lse, t(*so.shape), None, 3, 0.25, None, sk, sv)),
        (ops.swa_attn_bwd, (q, k, v, so, lse, t(*so.shape), t(*lse.shape, dt=torch.float32), 3, 0.25, None,
                            None, None)),
        (ops.topk_gating_bwd, (t(11, 3, dt=torch.float32), logits, ids, "softmax", True, 1.0)),
        (ops.moe_permute_bwd, (t(*x_perm.shape), row_map)),
        (ops.moe_unpermute_bwd, (t(11, 8), x_perm, row_map, w)),
    ]
