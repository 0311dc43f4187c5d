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
    model.fused_cpu_inference = False  # the PyTorch path's ops (the fused kernel counts its own: below)
    ids = torch.randint(1, 50, (4, 20), generator=torch.Generator().manual_seed(1))
    ids[0, :5] = 0  # left padding
    with torch.no_grad():
        model(ids, last_only=True)  # first call: oneDNN's checks, the folded attention weights
        expected = count_flops(model, ids, last_only=True)[1]
        monkeypatch.setattr(onednn, "_usable", use_onednn and onednn._check())
        monkeypatch.setattr(onednn, "_fused_usable", use_onednn and onednn._check_fused())
        flops = count_flops(model, ids, last_only=True)[1]
    assert flops == expected > 0


def test_the_fused_cpu_kernels_count_their_own_products():
    from recsys.kernels import cpu_build, cpu_ranking
    from recsys.models.sasrec import SASRec, SASRecConfig

    if not cpu_build.available():
        pytest.skip("no fused CPU kernel on this machine")
    model = SASRec(SASRecConfig(max_seq_len=20, hidden_dim=16, ffn_dim=24, num_blocks=1, num_heads=1), 50).eval()
    with torch.no_grad():
        model(torch.tensor([[0, 0, 7]]), last_only=True)  # first call: the folded attention weights
        _, flops = count_flops(model, torch.tensor([[0, 0, 7]]), last_only=True)
    # one block, one item, folded attention: query and output products (2 x 2 D^2), the feed-forward
    # (2 x 2 F D), scores over 8 keys (1 real, rounded up to 8: 2 x 8 x D) and the weighted sum (2 D)
    assert flops == 2 * 2 * 16 * 16 + 2 * 2 * 24 * 16 + 2 * 8 * 16 + 2 * 16
    # two heads (not folded): the last block's query, per head Wk_h^T q_h (2 D dh), the scores (2 x 8 x D),
    # sum_j p_j u_j (2 D) and Wv_h of it (2 D dh); then the output product and the feed-forward
    model = SASRec(SASRecConfig(max_seq_len=20, hidden_dim=16, ffn_dim=24, num_blocks=1, num_heads=2), 50).eval()
    with torch.no_grad():
        _, flops = count_flops(model, torch.tensor([[0, 0, 7]]), last_only=True)
    assert flops == 2 * 16 * 16 + 2 * (2 * 16 * 8 + 2 * 8 * 16 + 2 * 16 + 2 * 16 * 8) + 2 * 16 * 16 + 2 * 2 * 24 * 16
    ranker = cpu_ranking.ItemRanker(torch.randn(40, 16), 40)
    with cpu_build.counting_flops() as counted:
        ranker.ranks(torch.randn(3, 16), torch.tensor([1, 2, 3]), None, "optimistic")
    assert counted[0] == 3 * 2 * 16 * (48 + 16)  # 40 items in 48 columns, and the target's 16
