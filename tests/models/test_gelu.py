import pytest
import torch
import torch.nn.functional as F

from recsys.kernels import cpu_encoder
from recsys.models.gelu import GELU

pytestmark = pytest.mark.skipif(not cpu_encoder.available(), reason="no fused CPU kernels (no C compiler)")


@pytest.mark.parametrize("shape", [(4099,), (64, 200, 3)])  # a tail past the 8-wide vectors; a 3-D batch
def test_forward_and_backward_equal_torchs_exact_gelu(shape):
    torch.manual_seed(0)
    x = (torch.randn(shape) * 3).requires_grad_()  # |x| up to ~15: both tails of erf and of the density
    grad = torch.randn(shape)
    y = GELU()(x)
    (dx,) = torch.autograd.grad(y, x, grad)
    # the reference in float64: torch's own fp32 GELU differs from it by up to 1.2e-6 on AVX-512 CPUs
    # (the kernel by 4.5e-7), more than the tolerance below
    x_ref = x.detach().double().requires_grad_()
    y_ref = F.gelu(x_ref)
    (dx_ref,) = torch.autograd.grad(y_ref, x_ref, grad.double())
    torch.testing.assert_close(y, y_ref.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dx, dx_ref.float(), rtol=1e-5, atol=1e-6)
    assert y.grad_fn is not None and "KernelGELU" in type(y.grad_fn).__name__


def test_small_tensors_and_other_dtypes_keep_torchs_gelu():
    x = torch.randn(10, requires_grad=True)
    assert "Gelu" in type(GELU()(x).grad_fn).__name__
    xb = torch.randn(5000, dtype=torch.bfloat16)
    torch.testing.assert_close(GELU()(xb), F.gelu(xb))
    assert isinstance(GELU(), torch.nn.GELU)  # what the fused inference looks for
