import math

import pytest
import torch

from recsys.kernels import cpu_build, cpu_dropout
from recsys.models import dropout as dropout_module
from recsys.models.dropout import Dropout, dropout, keep_mask


@pytest.fixture(autouse=True, params=["kernel", "torch generator"])
def mask_path(request, monkeypatch):
    """Every test on both mask paths: the C kernel (where it builds) and torch's generator."""
    if request.param == "kernel" and not cpu_build.available():
        pytest.skip("no fused CPU kernels here (no C compiler)")
    if request.param != "kernel":
        monkeypatch.setattr(dropout_module, "_kernels_ready", lambda: False)
    return request.param


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_keeps_a_fraction_one_minus_p_scaled_up(p):
    torch.manual_seed(0)
    x = torch.rand(200_000) + 0.5  # no zeros, so a dropped element is recognisable
    y = dropout(x, p)
    kept = y != 0
    n = x.numel()
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))
    assert abs(y.mean().item() - x.mean().item()) < 0.01  # unbiased


def test_gradient_is_the_mask():
    torch.manual_seed(1)
    x = (torch.rand(1000) + 0.5).requires_grad_(True)
    y = dropout(x, 0.3)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y / x).detach())


def test_identity_in_eval_mode_or_at_zero_and_zeros_at_one():
    x = torch.randn(4, 5)
    layer = Dropout(0.5).eval()
    assert layer(x) is x
    assert dropout(x, 0.0) is x
    assert torch.count_nonzero(dropout(x, 1.0)) == 0
    with pytest.raises(ValueError, match="probability"):
        Dropout(1.5)


def test_seeded_like_torch():
    x = torch.randn(64, 32)
    torch.manual_seed(7)
    a = Dropout(0.5).train()(x)
    torch.manual_seed(7)
    b = Dropout(0.5).train()(x)
    torch.manual_seed(8)
    c = Dropout(0.5).train()(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_mask_bits_are_independent_and_do_not_depend_on_the_threads(mask_path):
    torch.manual_seed(3)
    keep = keep_mask((4, 100_003), 0.5)  # an odd size: a last word of 4 elements only partly used
    flat = keep.flatten() - 0.5
    n = flat.numel()
    for lag in (1, 2, 3, 4, 5):  # within one 64-bit word (1-3) and across words
        corr = float((flat[:-lag] * flat[lag:]).mean() / 0.25)
        assert abs(corr) < 5 / math.sqrt(n), lag
    assert set(keep.unique().tolist()) == {0.0, 1.0}
    if mask_path == "kernel":
        torch.manual_seed(3)
        one = cpu_dropout.keep_mask((4, 100_003), 32768, 1.0, num_threads=1)
        torch.manual_seed(3)
        assert torch.equal(one, cpu_dropout.keep_mask((4, 100_003), 32768, 1.0, num_threads=3))
        assert torch.equal(one, keep)
