"""Kernel tests run the Triton kernels in Triton's interpreter on CPU when no GPU is present.

TRITON_INTERPRET must be set before the kernel module is imported (``triton.jit`` reads it then)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
