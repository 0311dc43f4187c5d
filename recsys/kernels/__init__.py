"""Compute kernels: fused attention ops (each a PyTorch reference, a Triton kernel and a dispatcher) and
fp32 CPU products through oneDNN (``onednn``).

Nothing here imports the rest of the package; optional packages (triton) are imported where used.
"""
