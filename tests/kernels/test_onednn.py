import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recsys.kernels import onednn


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("transposed_input", [False, True])
def test_linear_equals_f_linear_with_gradients(bias, transposed_input):
    torch.manual_seed(0)
    x = torch.randn(3, 16, 7).transpose(1, 2) if transposed_input else torch.randn(3, 7, 16)  # [3, 7, 16]
    x.requires_grad_(True)
    weight = torch.randn(24, 16, requires_grad=True)
    b = torch.randn(24, requires_grad=True) if bias else None
    out = onednn.linear(x, weight, b)
    expected = F.linear(x, weight, b)
    assert out.shape == (3, 7, 24)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    upstream = torch.randn_like(out)
    inputs = [x, weight] + ([b] if bias else [])
    grads = torch.autograd.grad((out * upstream).sum(), inputs)
    expected_grads = torch.autograd.grad((expected * upstream).sum(), inputs)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_linear_without_grad_and_for_a_weight_only_gradient():
    torch.manual_seed(1)
    x, weight, b = torch.randn(9, 8), torch.randn(5, 8, requires_grad=True), torch.randn(5)
    with torch.no_grad():
        torch.testing.assert_close(onednn.linear(x, weight, b), F.linear(x, weight, b), rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(onednn.linear(x, weight, b).square().sum(), [weight])
    (expected,) = torch.autograd.grad(F.linear(x, weight, b).square().sum(), [weight])
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-5)


def test_mm_equals_torch_mm_for_every_layout():
    torch.manual_seed(2)
    a, b = torch.randn(40, 12), torch.randn(12, 30)
    for left in (a, a.T.contiguous().T):  # row-major (oneDNN) and column-major (torch.mm) first operand
        for right in (b, b.T.contiguous().T):
            torch.testing.assert_close(onednn.mm(left, right), left @ right, rtol=1e-5, atol=1e-5)


def test_linear_module_is_a_drop_in_for_nn_linear():
    torch.manual_seed(3)
    plain = nn.Linear(6, 4)
    ours = onednn.Linear(6, 4)
    ours.load_state_dict(plain.state_dict())
    assert list(ours.state_dict()) == ["weight", "bias"]
    x = torch.randn(2, 5, 6)
    torch.testing.assert_close(ours(x), plain(x), rtol=1e-5, atol=1e-6)


def test_check_leaves_the_global_random_stream_alone():
    state = torch.get_rng_state()
    onednn._check()  # runs at the first product, wherever that falls in a seeded run
    assert torch.equal(torch.get_rng_state(), state)


def test_falls_back_to_torch_where_onednn_does_not_apply(monkeypatch):
    x = torch.randn(4, 8)
    assert not onednn.usable(x.bfloat16())  # only fp32 goes this way (bf16 products use oneDNN already)
    assert not onednn.usable(x[:0])
    assert onednn.usable(x) and not onednn.usable(
        x, onednn.MAX_OUTPUT_BYTES // 4 + 1
    )  # a fresh output that large faults
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn.usable(x)  # autocast picks its own low-precision product
        assert onednn.linear(x, torch.randn(3, 8)).dtype == torch.bfloat16
    monkeypatch.setenv("RECSYS_CPU_GEMM", "torch")
    assert not onednn._check()
    monkeypatch.delenv("RECSYS_CPU_GEMM")
    # an op that is missing or disagrees with torch.mm is never used
    monkeypatch.setattr(onednn, "_product", lambda x, w, b=None: torch.zeros(x.shape[0], w.shape[0]))
    assert not onednn._check()

    def missing(*args):
        raise AttributeError("no such op")

    monkeypatch.setattr(onednn, "_product", missing)
    assert not onednn._check()
    monkeypatch.setattr(onednn, "_usable", False)
    torch.testing.assert_close(onednn.linear(x, torch.ones(3, 8)), x.sum(1, keepdim=True).expand(4, 3))


def test_fused_feed_forward_equals_torch_ops_and_applies_only_at_inference():
    torch.manual_seed(0)
    first, second = nn.Linear(64, 256), nn.Linear(256, 64)
    x, residual = torch.randn(300, 64), torch.randn(300, 64)
    with torch.no_grad():
        expected = residual + second(F.gelu(first(x)))
        fused = onednn.feed_forward(x, first, second, residual)
        if onednn.usable(x):  # oneDNN present (the official x86 wheels): the fused path ran
            assert fused is not None
            torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
        assert onednn.feed_forward(x[:, None], first, second, residual) is None  # 2-D only
    assert onednn.feed_forward(x, first, second, residual) is None  # gradients on: torch's ops


def test_a_blocks_inference_output_is_the_same_with_the_fused_feed_forward(monkeypatch):
    from recsys.models import sasrec
    from recsys.models.layers import blocks

    torch.manual_seed(0)
    model = sasrec.SASRec(
        sasrec.SASRecConfig(max_seq_len=20, hidden_dim=32, num_heads=2, ffn_dim=128, dropout=0.0), 50
    ).eval()
    ids = torch.randint(1, 50, (6, 20))
    ids[:2, :9] = 0
    with torch.no_grad():
        fused = model.user_vectors(ids)
        monkeypatch.setattr(blocks, "feed_forward", lambda *args: None)
        torch.testing.assert_close(fused, model.user_vectors(ids), rtol=1e-5, atol=1e-6)
