"""SASRec and BERT4Rec on a GPU under bf16 autocast: their attention runs on SDPA's fused kernels.

    python benchmarks/gpu_sdpa_check.py

Restricts SDPA to the flash and memory-efficient backends (no math fallback): if the models' calls
could not use a fused kernel, SDPA raises instead of silently materialising the attention matrix.
Prints the forward+backward time per batch for each model. Needs a CUDA GPU.
"""

from __future__ import annotations

import sys
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from recsys.models.base import build_model


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA GPU")
        return 1
    torch.manual_seed(0)
    num_items, B, L = 50_000, 256, 200
    lengths = torch.randint(5, L + 1, (B,))
    item_ids = torch.randint(1, num_items, (B, L))
    item_ids[torch.arange(L)[None, :] < (L - lengths)[:, None]] = 0  # left padding, as the batcher makes
    item_ids = item_ids.cuda()
    for name in ("sasrec", "bert4rec"):
        model = build_model(
            name, {"max_seq_len": L, "hidden_dim": 64, "num_blocks": 2, "num_heads": 2}, num_items
        ).cuda()
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            for step in range(6):
                if step == 1:
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    out = model(item_ids)  # [B, L, D]
                out.float().square().mean().backward()
            torch.cuda.synchronize()
        ms = (time.perf_counter() - start) / 5 * 1e3
        print(
            f"{name}: bf16 autocast, SDPA restricted to flash / memory-efficient: ok, "
            f"{ms:.1f} ms per forward+backward of {B} x {L}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
