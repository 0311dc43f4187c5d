import math

import pytest
import torch

from recsys.models.dropout import Dropout, dropout


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
