"""The import rules of docs/architecture.md, checked on the source: a change that breaks one fails here."""

import ast
import json
import re
import sys
from pathlib import Path

from recsys.cli import main
from tests.conftest import REPO, needs_data

PACKAGE = REPO / "recsys"

# what each part of the package may import from recsys (its own part is always allowed); parts not
# listed (cli, api, export, retrieval, results, click, baselines, the package itself) sit on top and
# may import anything
ALLOWED = {
    "errors": set(),
    "metrics": {"errors"},
    "files": {"errors"},
    "distributed": set(),
    "tracking": {"errors"},
    "recipe_index": {"errors"},
    "start_here": set(),
    "kernels": {"errors", "files", "metrics"},
    "data": {"errors", "files", "config"},
    "losses": {"errors", "config", "kernels", "metrics", "data"},
    "models": {"errors", "files", "metrics", "kernels", "data", "text"},
    "text": {"errors", "files", "data", "models"},
    "evaluation": {"errors", "config", "files", "metrics", "kernels", "data", "distributed"},
    "config": {"errors", "models"},
    "train": {
        "errors",
        "files",
        "metrics",
        "kernels",
        "data",
        "models",
        "losses",
        "evaluation",
        "config",
        "distributed",
        "text",
        "results",
        "tracking",
    },
}
# shared parts under recsys/models; every other module there is one model and imports none of the others
SHARED_MODEL_MODULES = {"base", "ctr_base", "dropout", "minilm", "layers", "counts"}


def _imports(path: Path) -> set[str]:
    """The recsys modules a file imports, as dotted names below recsys ("data.readers", "models.layers")."""
    module = path.relative_to(REPO).with_suffix("").parts
    package = module[:-1] if path.name != "__init__.py" else module[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - (node.level - 1)])
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] if node.module or not node.level else [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n.split(".", 1)[1] for n in names if n.startswith("recsys.")}
    return found


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("").parts
    return rel[0]


def test_every_part_imports_only_what_the_rules_allow():
    broken = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = _part(path)
        if part not in ALLOWED:
            continue
        for target in _imports(path):
            if target.split(".")[0] not in ALLOWED[part] | {part}:
                broken.append(f"{path.relative_to(REPO)} imports recsys.{target}")
    assert not broken, "imports against docs/architecture.md:\n" + "\n".join(broken)


def test_no_model_file_imports_another_model():
    models = PACKAGE / "models"
    model_names = {p.stem for p in models.glob("*.py")} - SHARED_MODEL_MODULES - {"__init__"}
    assert {"sasrec", "bert4rec", "hstu", "recformer", "din", "twin", "dare"} <= model_names
    broken = []
    for name in sorted(model_names):
        for target in _imports(models / f"{name}.py"):
            parts = target.split(".")
            if parts[0] == "models" and len(parts) > 1 and parts[1] in model_names - {name}:
                broken.append(f"recsys/models/{name}.py imports recsys.{target}")
    assert not broken, "\n".join(broken)


def test_the_rules_can_fail(tmp_path):
    """The checker sees relative and absolute imports alike."""
    bad = tmp_path / "recsys" / "metrics.py"
    bad.parent.mkdir()
    bad.write_text("from .train import Trainer\nimport recsys.data.readers\nfrom . import files\n")
    import tests.test_architecture as rules

    saved = rules.REPO
    rules.REPO = tmp_path
    try:
        assert _imports(bad) == {"train", "data.readers", "files"}
    finally:
        rules.REPO = saved


def test_the_architecture_page_states_these_rules():
    page = (REPO / "docs" / "architecture.md").read_text()
    for part in ALLOWED:
        assert f"`{part}`" in page, part
    assert "never from another model" in page


@needs_data("ml-100k")
def test_the_example_model_of_the_architecture_page_trains_from_a_recipe(tmp_path, monkeypatch):
    """The page's model, saved as a module of one's own, named in a recipe as "module:name", trained."""
    page = (REPO / "docs" / "architecture.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", page, re.S)
    (tmp_path / "my_models.py").write_text("\n".join(line[2:] for line in code.splitlines()))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_models", raising=False)
    recipe = tmp_path / "gru.toml"
    recipe.write_text(
        '[data]\ndataset = "ml-100k"\n\n[model]\nname = "my_models:tiny_gru"\nhidden_dim = 16\n'
        "max_seq_len = 20\n\n[train]\nepochs = 10\nlr = 0.005\npatience = 0\nnum_threads = 1\n\n[eval]\nks = [10]\n"
    )
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 0
    final = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    assert final["test"]["ndcg@10"] > 0.01  # better than random (10 of 1,682 items: ~0.003)
    assert main(["evaluate", str(tmp_path / "run")]) == 0  # the run names the model: it loads again
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "r2"), "--set", "model.name=my_models:nope"]) == 2
