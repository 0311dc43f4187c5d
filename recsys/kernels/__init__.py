"""Fused attention ops: each a PyTorch reference, (later) a Triton kernel, and a dispatcher.

Nothing here imports the rest of the package; optional packages (triton) are imported where used.
"""
