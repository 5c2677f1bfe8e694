"""spike_collapse sums any integer steps by its documented formula (sum_t s_t, or sum_t 2^(T-1-t) s_t bitwise), not
only spike_expand's {0, 1} / {-1, 0, 1}: on every available device, against the formula in int64."""
import pytest
import torch

import sbops


@pytest.mark.parametrize("dev", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("mode", ["binary", "ternary", "bitwise"])
def test_any_integer_steps_are_summed_by_the_formula(mode, dev):
    g = torch.Generator().manual_seed(0)
    trains = torch.randint(-5, 6, (6, 3, 7), generator=g, dtype=torch.int8)
    w = torch.tensor([2 ** (5 - t) if mode == "bitwise" else 1 for t in range(6)], dtype=torch.int64)
    want = (trains.long() * w[:, None, None]).sum(0)
    got = sbops.spike_collapse(trains.to(dev), mode)
    assert got.dtype == torch.int32 and torch.equal(got.cpu().long(), want)
