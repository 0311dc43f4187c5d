"""``recsys recipes`` (the packaged recipes), ``recsys config show RECIPE`` (a recipe resolved, each key
with its meaning and default) and ``recsys report RUN_DIR...`` (an HTML page about finished runs)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re

from ..recipe_index import describe, list_recipes, recipes_dir, resolve_recipe


def cmd_recipes(args) -> int:
    root = recipes_dir()
    for name in list_recipes():
        text = describe(root / f"{name}.toml")
        print(f"{name:30s} {text[:110] + ('...' if len(text) > 110 else '')}")
    print(f"\n{len(list_recipes())} recipes in {root}; run one with: recsys train NAME [--set key=value ...]")
    return 0


_FIELD = re.compile(r"^\s+(\w+)\s*:[^=]*(?:=\s*[^#]*)?(?:#\s*(.*))?$")


def field_meanings(cls) -> dict[str, str]:
    """Each field of a config dataclass (and of the dataclasses it inherits from) with the comment written
    beside it or on the lines above it."""
    out: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if base is not object:
            out.update(_own_field_meanings(base))
    return out


def _own_field_meanings(cls) -> dict[str, str]:
    out, above = {}, []
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return out
    for line in lines[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        match = _FIELD.match(line)
        if match and not stripped.startswith(("def ", "@", "return")):
            out[match.group(1)] = " ".join([*above, match.group(2) or ""]).strip()
        above = []
    return out


def _show_section(name: str, obj, extra: dict | None = None) -> None:
    print(f"[{name}]")
    meanings = field_meanings(type(obj))
    for key, value in (extra or {}).items():
        print(f"  {key} = {json.dumps(value)}")
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        shown = json.dumps(value if not isinstance(value, tuple) else list(value))
        changed = (
            ""
            if value == default
            else f"   (default {json.dumps(default if not isinstance(default, tuple) else list(default))})"
        )
        meaning = meanings.get(f.name, "")
        print(f"  {f.name} = {shown}{changed}" + (f"\n      {meaning}" if meaning else ""))
    print()


def cmd_config_show(args) -> int:
    from ..click import is_click_recipe, load_click_recipe
    from ..config import load_recipe

    path = resolve_recipe(args.recipe)
    print(f"# {path}" + (f" with {' '.join(args.set)}" if args.set else ""))
    if is_click_recipe(path):
        cfg = load_click_recipe(path, args.set)
        _show_section("data", cfg.data)
        _show_section("model", cfg.model, {"name": cfg.model_name})
        _show_section("train", cfg.train)
        return 0
    cfg = load_recipe(path, args.set)
    _show_section("data", cfg.data)
    _show_section("model", cfg.model, {"name": cfg.model_name})
    for section in ("loss", "train", "eval"):
        _show_section(section, getattr(cfg, section))
    return 0


def cmd_report(args) -> int:
    from ..report import build_report

    out = build_report(args.run_dirs, args.out, examples=args.examples)
    print(f"report of {len(args.run_dirs)} run(s): {out}")
    return 0
