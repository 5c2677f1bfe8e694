"""sbops.models.spike_report: the spike sparsity of a model's coded linear inputs, checked against a
float64 re-derivation from the inputs the layers actually receive."""
import pytest
import torch

from sbops.models import SpikingBrainConfig, SpikingBrainForCausalLM, spike_report
from sbops.nn import SpikeLinear

TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=2, head_dim=16,
            window=8, layer_types=("gla", "swa"))


def _model(**kw):
    torch.manual_seed(0)
    return SpikingBrainForCausalLM(SpikingBrainConfig(**{**TINY, **kw})).eval()


def _ref_counts(x, k):
    """round-half-even(x / vth) with vth = clamp(mean|x| / k, 1e-5, 1e4) in float64 (ties are
    measure-zero for random inputs, so float32 vs float64 thresholds agree on these inputs)."""
    x = x.double()
    vth = (x.abs().mean(-1, keepdim=True) / k).clamp(1e-5, 1e4)
    return torch.round(x / vth).long()


def _ref_sparsity(counts, mode):
    """Zero entries / all entries of the trains, T = the steps the largest count needs."""
    a = counts.abs()
    m = int(a.max())
    if mode == "bitwise":
        T = max(1, m.bit_length())
        spikes = sum(((a >> b) & 1).sum().item() for b in range(T))
    else:  # ternary: |c| unit spikes of c's sign
        T = max(1, m)
        spikes = a.sum().item()
    return 1.0 - spikes / (T * counts.numel()), T


def test_report_matches_a_float64_rederivation_per_layer_and_overall():
    model = _model(spike_k=3.0)
    ids = torch.randint(0, 96, (2, 11))
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=n: seen.setdefault(name, args[0].detach().clone()))
             for n, m in model.named_modules() if isinstance(m, SpikeLinear)]
    model(ids)
    for h in hooks:
        h.remove()
    rep = spike_report(model, ids)
    assert set(rep["layers"]) == set(seen) and len(seen) >= 8
    for mode in ("bitwise", "ternary"):
        zeros = entries = 0.0
        for name, x in seen.items():
            want, T = _ref_sparsity(_ref_counts(x, 3.0), mode)
            got = rep["layers"][name][mode]
            assert got["T"] == T and got["numel"] == x.numel()
            assert got["sparsity"] == pytest.approx(want, abs=1e-12)
            zeros += want * T * x.numel()
            entries += T * x.numel()
        assert rep["overall"][mode]["sparsity"] == pytest.approx(zeros / entries, abs=1e-12)
        assert 0.0 < rep["overall"][mode]["sparsity"] < 1.0


def test_larger_k_means_finer_counts_and_fewer_silent_neurons():
    ids = torch.randint(0, 96, (1, 16))
    coarse = spike_report(_model(spike_k=1.0), ids)["overall"]["ternary"]
    fine = spike_report(_model(spike_k=8.0), ids)["overall"]["ternary"]
    assert fine["silent_fraction"] < coarse["silent_fraction"]
    assert fine["spikes_per_neuron"] > coarse["spikes_per_neuron"]


def test_hooks_are_removed_and_outputs_unchanged():
    model = _model(spike_k=3.0)
    ids = torch.randint(0, 96, (1, 9))
    before = model(ids).logits
    spike_report(model, ids)
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert torch.equal(model(ids).logits, before)


def test_a_model_without_spike_coding_and_an_unknown_mode_are_errors():
    with pytest.raises(ValueError, match="no spike-coded linear layer"):
        spike_report(_model(), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="modes must be among"):
        spike_report(_model(spike_k=3.0), torch.zeros(1, 4, dtype=torch.long), modes=("unary",))
