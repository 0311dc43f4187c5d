"""What an installed (not editable) package carries: every subpackage, and the dataset cards."""

import tomllib
from pathlib import Path

from recsys.data import cards
from tests.conftest import REPO


def test_every_subpackage_and_the_cards_are_in_the_wheel_list():
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = sorted(".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "recsys").rglob("__init__.py"))
    mapped = set(setup["package-dir"])  # recsys._cards and recsys._recipes: the repository's datasets/ and recipes/
    assert mapped == {"recsys._cards", "recsys._recipes"} and setup["package-dir"]["recsys._recipes"] == "recipes"
    assert sorted(p for p in setup["packages"] if p not in mapped) == on_disk  # a new subpackage: list it
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


def test_the_wheel_carries_the_recipes_cards_and_kernel_sources(tmp_path):
    import shutil
    import subprocess
    import sys
    import zipfile

    from recsys.recipe_index import list_recipes

    source = tmp_path / "src"  # built from a copy: a build leaves build/ and *.egg-info beside its sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("recsys", "datasets", "recipes"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    built = subprocess.run([*command, str(source)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    names = set(zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist())
    assert {f"recsys/_recipes/{name}.toml" for name in list_recipes()} <= names
    assert {f"recsys/_cards/{name}.toml" for name in cards.list_cards()} <= names
    assert {"recsys/kernels/cpu_kernels.c", "recsys/kernels/cpu/common.h", "recsys/kernels/cpu/encoder.c"} <= names


def test_without_a_repository_the_recipes_come_from_the_package(monkeypatch, tmp_path):
    from recsys import recipe_index

    monkeypatch.delenv("RECSYS_RECIPES", raising=False)
    monkeypatch.setattr(recipe_index, "REPO_ROOT", tmp_path)
    assert recipe_index.recipes_dir() == Path(recipe_index.__file__).resolve().parent / "_recipes"
    monkeypatch.setattr(recipe_index, "REPO_ROOT", REPO)
    assert recipe_index.recipes_dir() == REPO / "recipes"
