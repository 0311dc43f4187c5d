"""What an installed (not editable) package carries: every subpackage, and the dataset cards."""

import tomllib
from pathlib import Path

from recsys.data import cards
from tests.conftest import REPO


def test_every_subpackage_and_the_cards_are_in_the_wheel_list():
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = sorted(".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "recsys").rglob("__init__.py"))
    assert sorted(p for p in setup["packages"] if p != "recsys._cards") == on_disk  # a new subpackage: list it
    assert setup["package-dir"]["recsys._cards"] == "datasets" and "*.toml" in setup["package-data"]["recsys._cards"]
    assert sorted(p.stem for p in (REPO / "datasets").glob("*.toml")) == cards.list_cards()


def test_without_a_repository_the_cards_come_from_the_package(monkeypatch, tmp_path):
    monkeypatch.delenv("RECSYS_CARDS", raising=False)
    monkeypatch.setattr(cards, "REPO_ROOT", tmp_path)  # an installed package: no datasets/ beside it
    assert cards.cards_dir() == Path(cards.__file__).resolve().parents[1] / "_cards"
    monkeypatch.setattr(cards, "REPO_ROOT", REPO)
    assert cards.cards_dir() == REPO / "datasets"


def test_the_fused_cpu_encoder_source_is_in_the_wheel_list():
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "*.c" in setup["package-data"]["recsys.kernels"]
    assert (REPO / "recsys" / "kernels" / "cpu_kernels.c").exists() and (
        REPO / "recsys" / "kernels" / "cpu" / "common.h"
    ).exists()
    assert "cpu/*.c" in setup["package-data"]["recsys.kernels"] and "cpu/*.h" in setup["package-data"]["recsys.kernels"]
