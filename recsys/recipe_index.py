"""The packaged recipes: ``recipes/DATASET/NAME.toml`` in a checkout, installed with the package as
``recsys/_recipes``. A recipe is named by its path without the suffix (``"beauty/sasrec_ce"``); a path to
a TOML file of one's own works wherever a name does."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from .errors import RecsysError

REPO_ROOT = Path(__file__).resolve().parents[1]


def recipes_dir() -> Path:
    """RECSYS_RECIPES, else the repository's recipes/ (a checkout or an editable install), else the copy an
    installed package carries (recsys/_recipes, see pyproject.toml)."""
    if "RECSYS_RECIPES" in os.environ:
        return Path(os.environ["RECSYS_RECIPES"])
    repo = REPO_ROOT / "recipes"
    return repo if repo.is_dir() else Path(__file__).resolve().parent / "_recipes"


def list_recipes() -> list[str]:
    """Every packaged recipe's name, e.g. ``["beauty/bert4rec", ...]``."""
    root = recipes_dir()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.glob("*/*.toml"))


def describe(path: Path) -> str:
    """A recipe's opening comment, joined into one line (what it runs and why)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def resolve_recipe(name_or_path: str | Path) -> Path:
    """The TOML file of a recipe name or path; an unknown one is an error listing the closest names."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.exists():
        return path
    name = str(name_or_path).removesuffix(".toml")
    packaged = recipes_dir() / f"{name}.toml"
    if packaged.exists() and "/" in name and ".." not in Path(name).parts:
        return packaged
    if path.exists():
        return path
    known = list_recipes()
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; packaged recipes: {', '.join(known)}"
    raise RecsysError(f"recipe {str(name_or_path)!r} not found (neither a file nor a packaged recipe){hint}")


def recipe_label(path: str | Path) -> str:
    """How a recipe is named in records: ``recipes/NAME.toml`` for a packaged one, else the path given."""
    path = Path(path)
    try:
        return "recipes/" + path.resolve().relative_to(recipes_dir().resolve()).as_posix()
    except ValueError:
        return str(path)
