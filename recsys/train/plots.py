"""A run's learning curves as a PNG (matplotlib, an optional extra)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def plot_learning_curves(
    history: list[dict], path: Path, metric: str, title: str = "", best_epoch: int | None = None
) -> bool:
    """The run's training loss and validation metric per epoch as a PNG (integer epochs, the best epoch
    marked). Needs matplotlib (``pip install recsys[plot]``); without it, says so and writes nothing.
    Returns whether it wrote the file."""
    if not history:
        return False
    try:
        import matplotlib
    except ImportError:
        print(f"note: no {path.name}: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax1 = plt.subplots(figsize=(6.4, 3.8))
    epochs = [r["epoch"] for r in history]
    ax1.plot(epochs, [r["train_loss"] for r in history], color="tab:blue", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss", color="tab:blue")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    valid = [(r["epoch"], r["valid"][metric]) for r in history if "valid" in r]
    if valid:
        ax2 = ax1.twinx()
        ax2.plot(*zip(*valid), color="tab:orange", marker=".", label=f"valid {metric}")
        ax2.set_ylabel(f"valid {metric}", color="tab:orange")
        best = dict(valid).get(best_epoch)
        if best is not None:
            ax2.axvline(best_epoch, color="grey", linestyle=":", linewidth=1)
            ax2.plot([best_epoch], [best], marker="*", markersize=12, color="tab:red", linestyle="none")
            ax2.annotate(
                f"best: epoch {best_epoch}, {best:.4f}",
                (best_epoch, best),
                textcoords="offset points",
                xytext=(-4, -14),
                ha="right",
                fontsize=8,
            )
    if title:
        ax1.set_title(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return True
