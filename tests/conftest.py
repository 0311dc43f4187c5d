"""Shared fixtures: the real datasets (RECSYS_DATA, default ../shared/datasets) and small synthetic logs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("RECSYS_DATA", REPO.parent / "shared" / "datasets"))


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    # never write caches beside the data or into the user's home
    monkeypatch.setenv("RECSYS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("RECSYS_DATA", str(DATA_DIR))


def needs_data(folder: str):
    """Skip (with the reason) when a real dataset folder is not on this machine."""
    return pytest.mark.skipif(not (DATA_DIR / folder).exists(), reason=f"{DATA_DIR / folder} not available")


def write_u_data(path: Path, n_users: int = 30, n_items: int = 40, per_user: int = 12, seed: int = 0) -> Path:
    """A synthetic ML-100K style u.data: user<TAB>item<TAB>rating<TAB>timestamp."""
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(1, n_users + 1):
        items = rng.choice(np.arange(1, n_items + 1), size=per_user, replace=False)
        ts = np.sort(rng.integers(10**9, 10**9 + 10**6, size=per_user))
        for i, t in zip(items, ts):
            lines.append(f"{u}\t{i}\t{rng.integers(1, 6)}\t{t}")
    path.write_text("\n".join(lines) + "\n")
    return path
