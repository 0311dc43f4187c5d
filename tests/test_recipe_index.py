"""The packaged recipes: every one loads and validates, names resolve, and the generated ones are current."""

from __future__ import annotations

import subprocess
import sys

import pytest

from recsys.click import is_click_recipe, load_click_recipe
from recsys.config import load_recipe
from recsys.errors import RecsysError
from recsys.models.base import MODELS, _import_builtin_models
from recsys.recipe_index import list_recipes, recipe_label, resolve_recipe
from tests.conftest import REPO


def test_every_recipe_loads_and_names_a_registered_model():
    _import_builtin_models()
    names = list_recipes()
    assert len(names) >= 50
    for name in names:
        path = resolve_recipe(name)
        if is_click_recipe(path):
            load_click_recipe(path)
        else:
            assert load_recipe(path).model_name in MODELS, name


def test_every_dataset_has_the_start_here_models():
    cards = sorted(p.stem for p in (REPO / "datasets").glob("*.toml"))
    for dataset in cards:
        models = {
            load_recipe(resolve_recipe(n)).model_name
            for n in list_recipes()
            if n.startswith(dataset + "/") and not is_click_recipe(resolve_recipe(n))
        }
        assert {"sasrec", "bert4rec", "hstu", "popularity", "item_cooc"} <= models, dataset


def test_generated_recipes_are_current():
    done = subprocess.run(
        [sys.executable, "-m", "recsys.start_here", "--check"], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stdout


def test_names_paths_and_labels():
    assert resolve_recipe("ml-100k/sasrec") == resolve_recipe("ml-100k/sasrec.toml")
    assert resolve_recipe(REPO / "recipes/ml-100k/sasrec.toml").exists()
    assert recipe_label(resolve_recipe("ml-100k/sasrec")) == "recipes/ml-100k/sasrec.toml"
    with pytest.raises(RecsysError, match="did you mean"):
        resolve_recipe("ml-100k/sasre")
    with pytest.raises(RecsysError, match="not found"):
        resolve_recipe("no-such-dataset/no-such-model")
