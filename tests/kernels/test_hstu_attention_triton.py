"""Parity of the fused Triton HSTU attention with the PyTorch reference, forward and every gradient.

On CPU this runs in Triton's interpreter (TRITON_INTERPRET=1, set by conftest.py) at small shapes.
Error bounds: fp32 inputs are compared at rtol 1e-4 / atol 1e-5 (fp32 accumulation in a different
order than the reference's; the kernel's fp32 dot products run in full fp32, not TF32, on a GPU too). fp16 at 2e-2 relative:
the inputs carry 11 significant bits and products are rounded to fp16 before the A.V product.
"""

import pytest
import torch

triton = pytest.importorskip("triton")

from recsys.kernels.hstu_attention import hstu_attention, hstu_attention_reference  # noqa: E402
from recsys.kernels.hstu_attention_triton import hstu_attention_triton  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(lengths, H, D, DV, dtype=torch.float32, seed=0, bias=True, N=40):
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    offsets = torch.tensor([0] + list(torch.cumsum(torch.tensor(lengths), 0)), dtype=torch.int64)
    make = lambda *shape: (torch.randn(*shape, generator=g) * 0.5).to(dtype).to(DEVICE).requires_grad_(True)  # noqa: E731
    q, k, v = make(T, H, D), make(T, H, D), make(T, H, DV)
    kwargs = {}
    if bias:
        times = torch.cumsum(torch.randint(0, 10**4, (T,), generator=g), 0).to(DEVICE)
        kwargs = dict(
            position_bias=(torch.randn(N, generator=g) * 0.3).to(DEVICE).requires_grad_(True),
            time_bias=(torch.randn(129, generator=g) * 0.3).to(DEVICE).requires_grad_(True),
            key_times=times,
            query_times=times + 7,
        )
    return q, k, v, offsets.to(DEVICE), kwargs


def _check(lengths, H, D, DV, bias, dtype=torch.float32, rtol=1e-4, atol=1e-5, N=40):
    q, k, v, offsets, kw = _inputs(lengths, H, D, DV, dtype, bias=bias, N=N)
    leaves = [q, k, v] + ([kw["position_bias"], kw["time_bias"]] if bias else [])
    grad_out = torch.randn(sum(lengths), H, DV, generator=torch.Generator().manual_seed(9)).to(dtype).to(DEVICE)

    ref = hstu_attention_reference(*(x.float() for x in (q, k, v)), offsets, N, **kw)
    ref_grads = torch.autograd.grad((ref * grad_out.float()).sum(), leaves, allow_unused=True)
    out = hstu_attention_triton(q, k, v, offsets, N, **kw)
    grads = torch.autograd.grad((out.float() * grad_out.float()).sum(), leaves, allow_unused=True)
    torch.testing.assert_close(out.float(), ref, rtol=rtol, atol=atol)
    for name, a, b in zip(["dq", "dk", "dv", "dpos", "dtime"], grads, ref_grads):
        torch.testing.assert_close(a.float(), b.float(), rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("lengths", [[0, 1, 5], [17, 3], [33]])  # empty, 1, odd, above the block size (16)
@pytest.mark.parametrize("bias", [False, True])
def test_parity_fp32(lengths, bias):
    _check(lengths, H=2, D=16, DV=16, bias=bias)


def test_parity_odd_head_dims_and_heads():
    _check([9, 20], H=3, D=25, DV=25, bias=True)  # HSTU-large's 25: padded to 32 inside the kernel


def test_parity_fp16():
    _check([18, 7], H=2, D=16, DV=16, bias=True, dtype=torch.float16, rtol=2e-2, atol=2e-3)


def test_a_changed_kernel_would_fail():
    """The parity check is sensitive: the reference with another 1/N differs beyond the tolerance."""
    q, k, v, offsets, kw = _inputs([12], 1, 16, 16)
    out = hstu_attention_triton(q, k, v, offsets, 40, **kw)
    other = hstu_attention_reference(q, k, v, offsets, 41, **kw)
    assert not torch.allclose(out, other, rtol=1e-4, atol=1e-5)


def test_dispatcher_picks_the_kernel_on_request():
    q, k, v, offsets, kw = _inputs([6, 3], 1, 16, 16)
    a = hstu_attention(q, k, v, offsets, 40, backend="triton", **kw)
    b = hstu_attention(q, k, v, offsets, 40, backend="reference", **kw)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("block_m, block_n", [(32, 16), (16, 32)])
def test_parity_with_unequal_blocks(monkeypatch, block_m, block_n):
    """The GPU configurations use BLOCK_M != BLOCK_N: the skewed diagonal sums of the position bias
    gradient and the causal loop bounds must hold for those too (checked here in the interpreter)."""
    from recsys.kernels import hstu_attention_triton as kernels

    config = triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n, "SKEW": 2 * max(block_m, block_n)}, num_warps=1)
    for kernel in (kernels._fwd_kernel, kernels._bwd_dkdv_kernel, kernels._bwd_dq_kernel):
        monkeypatch.setattr(kernel, "configs", [config])
        monkeypatch.setattr(kernel, "cache", {})
    _check([45, 1, 20], H=2, D=16, DV=16, bias=True, N=64)
