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


def test_a_generated_recipe_beside_a_hand_written_one_of_its_model_is_kept_current(tmp_path, monkeypatch):
    from recsys import start_here

    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "toy.toml").write_text('name = "toy"\n')
    folder = tmp_path / "recipes" / "toy"
    folder.mkdir(parents=True)
    (folder / "sasrec_mine.toml").write_text('[model]\nname = "sasrec"\nhidden_dim = 32\n')  # by hand
    monkeypatch.setattr(start_here, "CARDS", tmp_path / "datasets")
    monkeypatch.setattr(start_here, "RECIPES", tmp_path / "recipes")
    assert folder / "sasrec.toml" not in start_here.planned()  # a hand-written recipe of the model: none made
    assert folder / "bert4rec.toml" in start_here.planned()
    stale = start_here.HEADER.format(what="SASRec", dataset="toy") + '[model]\nname = "sasrec"\ndropout = 0.9\n'
    (folder / "sasrec.toml").write_text(stale)  # generated earlier, settings since changed: rewritten
    assert start_here.planned()[folder / "sasrec.toml"] == start_here.render("toy", "sasrec")


def test_names_paths_and_labels():
    assert resolve_recipe("ml-100k/sasrec") == resolve_recipe("ml-100k/sasrec.toml")
    assert resolve_recipe(REPO / "recipes/ml-100k/sasrec.toml").exists()
    assert recipe_label(resolve_recipe("ml-100k/sasrec")) == "recipes/ml-100k/sasrec.toml"
    with pytest.raises(RecsysError, match="did you mean"):
        resolve_recipe("ml-100k/sasre")
    with pytest.raises(RecsysError, match="not found"):
        resolve_recipe("no-such-dataset/no-such-model")
