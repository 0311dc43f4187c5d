"""benchmarks/flops.py counts what ran, whichever CPU path computed it."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from flops import count_flops  # noqa: E402

from recsys.kernels import onednn  # noqa: E402


def test_products_and_attention_are_counted_by_their_formulas():
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(100, 64, generator=gen), torch.randn(32, 64, generator=gen), torch.randn(32, generator=gen)
    onednn.linear(x, w, b)  # the first call checks oneDNN against torch (products of its own)
    for fn in (onednn.linear, F.linear):
        assert count_flops(fn, x, w, b)[1] == 2 * 100 * 64 * 32
    first, second = nn.Linear(64, 128), nn.Linear(128, 64)
    with torch.no_grad():
        onednn.feed_forward(x, first, second, x)
        out, flops = count_flops(onednn.feed_forward, x, first, second, x)
    assert flops == 2 * 2 * 100 * 64 * 128
    if out is not None:  # oneDNN's GELU and residual post-ops ran: the same products
        assert torch.allclose(out, x + second(F.gelu(first(x))), atol=1e-5)
    q = torch.randn(3, 2, 10, 16, generator=gen)
    mask = torch.ones(3, 1, 1, 10, dtype=torch.bool)
    assert count_flops(F.scaled_dot_product_attention, q, q, q, attn_mask=mask)[1] == 4 * 3 * 2 * 10 * 10 * 16


@pytest.mark.parametrize("use_onednn", [True, False])
def test_an_encoder_counts_the_same_through_onednn_and_torch(monkeypatch, use_onednn):
    from recsys.models.sasrec import SASRec, SASRecConfig

    model = SASRec(SASRecConfig(max_seq_len=20, hidden_dim=32, ffn_dim=64), num_items=50).eval()
    ids = torch.randint(1, 50, (4, 20), generator=torch.Generator().manual_seed(1))
    ids[0, :5] = 0  # left padding
    with torch.no_grad():
        model(ids, last_only=True)  # first call: oneDNN's checks, the folded attention weights
        expected = count_flops(model, ids, last_only=True)[1]
        monkeypatch.setattr(onednn, "_usable", use_onednn and onednn._check())
        monkeypatch.setattr(onednn, "_fused_usable", use_onednn and onednn._check_fused())
        flops = count_flops(model, ids, last_only=True)[1]
    assert flops == expected > 0
