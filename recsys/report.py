"""``recsys report RUN_DIR... --out report.html``: one self-contained static page about finished runs.

The page holds, for every run: its metrics next to the recipe's published numbers (``recipes/published.toml``),
its learning curves (inline SVG: train loss and the validation metric per epoch, the best epoch marked),
the catalogue coverage and popularity bias of its top-10 lists over the test users, and example
recommendations with item titles for a few test users. Several runs are compared side by side. No script,
no external file: the page opens anywhere, offline.
"""

from __future__ import annotations

import datetime as dt
import html
import tomllib
from pathlib import Path

import numpy as np
import torch

from .errors import RecsysError
from .files import atomic_write_bytes, make_folder, read_json, read_json_lines
from .recipe_index import recipes_dir

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:72rem;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}h3{font-size:1.05rem}
table{border-collapse:collapse;margin:.5rem 0 1rem}th,td{border:1px solid #ccc;padding:.25rem .55rem;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}.hit{background:#e5f5e0;font-weight:600}
.small{color:#666;font-size:.85rem}.curves{display:flex;flex-wrap:wrap;gap:1rem}figure{margin:0}
"""


def published_numbers() -> dict:
    """Published reference numbers by recipe label (``recipes/published.toml``): citations, not ours."""
    path = recipes_dir() / "published.toml"
    if not path.exists():
        return {}
    with open(path, "rb") as f:
        return tomllib.load(f)


def _esc(x) -> str:
    return html.escape(str(x))


def _num(x, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def learning_curve_svg(history: list[dict], metric: str, best_epoch: int | None, title: str) -> str:
    """Train loss (blue, left scale) and the validation metric (orange, right scale) by epoch, as SVG."""
    width, height, pad = 520, 260, 44
    epochs = [r["epoch"] for r in history]
    if not epochs:
        return "<p class='small'>no epochs recorded</p>"
    lo_e, hi_e = min(epochs), max(max(epochs), min(epochs) + 1)

    def x(e):
        return pad + (e - lo_e) / (hi_e - lo_e) * (width - 2 * pad)

    def series(values):
        lo, hi = min(values), max(values)
        hi = hi if hi > lo else lo + 1e-9
        return [height - pad - (v - lo) / (hi - lo) * (height - 2 * pad) for v in values], lo, hi

    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
        f"aria-label='{_esc(title)}'><title>{_esc(title)}</title>",
        f"<rect x='0' y='0' width='{width}' height='{height}' fill='white'/>",
        f"<line x1='{pad}' y1='{height - pad}' x2='{width - pad}' y2='{height - pad}' stroke='#999'/>",
        f"<text x='{width / 2}' y='{height - 8}' text-anchor='middle' font-size='12'>epoch</text>",
        f"<text x='{pad}' y='{height - pad + 16}' font-size='11' text-anchor='middle'>{lo_e}</text>",
        f"<text x='{width - pad}' y='{height - pad + 16}' font-size='11' text-anchor='middle'>{max(epochs)}</text>",
        f"<text x='{width / 2}' y='16' text-anchor='middle' font-size='13'>{_esc(title)}</text>",
    ]
    loss = [r["train_loss"] for r in history]
    ys, lo, hi = series(loss)
    points = " ".join(f"{x(e):.1f},{y:.1f}" for e, y in zip(epochs, ys))
    parts += [
        f"<polyline fill='none' stroke='#1f77b4' stroke-width='2' points='{points}'/>",
        f"<text x='4' y='{pad}' font-size='11' fill='#1f77b4'>loss {hi:.3f}</text>",
        f"<text x='4' y='{height - pad}' font-size='11' fill='#1f77b4'>{lo:.3f}</text>",
    ]
    valid = [(r["epoch"], r["valid"][metric]) for r in history if metric in r.get("valid", {})]
    if valid:
        ys, lo, hi = series([v for _, v in valid])
        points = " ".join(f"{x(e):.1f},{y:.1f}" for (e, _), y in zip(valid, ys))
        parts += [
            f"<polyline fill='none' stroke='#ff7f0e' stroke-width='2' points='{points}'/>",
            f"<text x='{width - 4}' y='{pad}' font-size='11' fill='#ff7f0e' text-anchor='end'>{metric} {hi:.4f}</text>",
            f"<text x='{width - 4}' y='{height - pad}' font-size='11' fill='#ff7f0e' text-anchor='end'>{lo:.4f}</text>",
        ]
        by_epoch = dict(zip([e for e, _ in valid], ys))
        if best_epoch in by_epoch:
            bx, by = x(best_epoch), by_epoch[best_epoch]
            parts += [
                f"<line x1='{bx:.1f}' y1='{pad}' x2='{bx:.1f}' y2='{height - pad}' stroke='#888' stroke-dasharray='3,3'/>",
                f"<circle cx='{bx:.1f}' cy='{by:.1f}' r='5' fill='#d62728'><title>best epoch {best_epoch}</title></circle>",
                f"<text x='{bx:.1f}' y='{pad - 6}' font-size='11' text-anchor='middle'>best: {best_epoch}</text>",
            ]
    parts.append("</svg>")
    return "".join(parts)


@torch.no_grad()
def top_lists(trainer, k: int = 10, max_users: int = 5000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(test users [n], their targets [n], their top-k item ids [n, k]) for up to ``max_users`` test users,
    seen items excluded as the run's evaluation does."""
    from .export import eval_set_windows, user_vectors_for

    test = trainer.split.test
    take = np.arange(min(len(test), max_users))
    subset = test.reordered(take)
    windows, timestamps, query_times = eval_set_windows(trainer, subset)
    users = torch.from_numpy(user_vectors_for(trainer, windows, timestamps=timestamps, query_times=query_times))
    items = trainer.model.item_vectors().detach().float().cpu()
    if trainer.cfg.loss.l2_normalize:
        items = torch.nn.functional.normalize(items, dim=-1)
    scores = users @ items.T
    scores[:, 0] = float("-inf")
    if trainer.cfg.eval.exclude_seen:
        data = trainer.split.data
        for row, user in enumerate(np.asarray(subset.users)):
            start = data.seq_offsets[user]
            seen = np.asarray(data.item_ids[start : start + int(subset.history_lengths[row])])
            scores[row, torch.from_numpy(seen.astype(np.int64))] = float("-inf")
    top = torch.topk(scores, k, dim=1).indices.numpy()
    return np.asarray(subset.users), np.asarray(subset.targets), top


def coverage_and_bias(trainer, top: np.ndarray, targets: np.ndarray) -> dict:
    """Catalogue coverage of the top-k lists and their popularity bias, against the training counts."""
    from .baselines import train_item_counts

    counts = train_item_counts(trainer.split).astype(np.float64)
    counts[0] = 0
    catalogue = trainer.split.data.num_items - 1
    order = np.argsort(-counts[1:], kind="stable") + 1
    head = set(order[: max(1, catalogue // 5)].tolist())  # the 20% most popular items
    recommended = top.reshape(-1)
    return {
        "coverage": len(set(recommended.tolist())) / catalogue,
        "head_share": float(np.mean([i in head for i in recommended])),
        "mean_popularity": float(counts[recommended].mean()),
        "target_mean_popularity": float(counts[targets].mean()),
        "catalogue_mean_popularity": float(counts[1:].mean()),
    }


def _titles(trainer) -> dict:
    if trainer.cfg.data.dataset == "custom":
        return {}
    from .data.cards import load_item_text

    text = load_item_text(trainer.cfg.data.dataset, trainer.cfg.data.data_dir)
    if text is None or "title" not in text.columns:
        return {}
    return dict(zip((str(i) for i in text["item_id"].to_list()), text["title"].to_list()))


def _run_section(run_dir: Path, trainer, examples: int, k: int) -> tuple[list[str], dict]:
    final = read_json(run_dir / "final_metrics.json", "final metrics")
    history = read_json_lines(run_dir / "metrics.jsonl", "per-epoch metrics log")
    metric = trainer.cfg.eval.early_stopping_metric
    users, targets, top = top_lists(trainer, k)
    stats = coverage_and_bias(trainer, top, targets)
    data = trainer.split.data
    titles = _titles(trainer)

    def item_cell(i: int, target: int | None = None) -> str:
        raw = data.item_raw_ids[i]
        title = titles.get(str(raw))
        label = f"{_esc(raw)}" + (f" — {_esc(title)}" if title else "")
        return f"<td class='hit'>{label}</td>" if target is not None and i == target else f"<td>{label}</td>"

    parts = [
        f"<h2 id='{_esc(run_dir.name)}'>{_esc(run_dir.name)}: {_esc(trainer.cfg.model_name)} / "
        f"{_esc(trainer.cfg.loss.name)} on {_esc(trainer.cfg.data.dataset)}</h2>",
        "<div class='curves'><figure>",
        learning_curve_svg(history, metric, final.get("best_epoch"), f"{run_dir.name}: loss and valid {metric}"),
        "</figure></div>",
        "<h3>Coverage and popularity of the top-10 lists</h3>",
        "<table class='bias'><tr><th>test users</th><th>catalogue coverage</th><th>share from the 20% most popular</th>"
        "<th>mean popularity: recommended / test targets / catalogue (training events)</th></tr>",
        f"<tr><td class='num'>{len(users):,}</td><td class='num'>{stats['coverage']:.1%}</td>"
        f"<td class='num'>{stats['head_share']:.1%}</td><td class='num'>{stats['mean_popularity']:.1f} / "
        f"{stats['target_mean_popularity']:.1f} / {stats['catalogue_mean_popularity']:.1f}</td></tr></table>",
        f"<h3>Example recommendations ({examples} test users; the test target highlighted where it is in the top {k})</h3>",
    ]
    for row in range(min(examples, len(users))):
        user = int(users[row])
        start, end = data.seq_offsets[user], data.seq_offsets[user + 1]
        history_items = np.asarray(data.item_ids[start : end - 1])[-5:]
        parts.append(
            f"<table class='examples'><tr><th colspan='2'>user {_esc(data.user_raw_ids[user])}</th></tr>"
            "<tr><th>last items seen</th><th>top recommendations</th></tr>"
        )
        for j in range(k):
            seen = item_cell(int(history_items[j])) if j < len(history_items) else "<td></td>"
            parts.append(f"<tr>{seen}{item_cell(int(top[row, j]), int(targets[row]))}</tr>")
        parts.append(
            f"<tr><td colspan='2' class='small'>test target: {_esc(data.item_raw_ids[int(targets[row])])}</td></tr></table>"
        )
    return parts, {"final": final, "stats": stats}


def build_report(run_dirs: list[str | Path], out: str | Path, examples: int = 3, k: int = 10) -> Path:
    """Write the page for ``run_dirs`` (finished next-item runs) to ``out`` (atomically) and return it."""
    from .train import load_run

    if not run_dirs:
        raise RecsysError("report: name at least one run folder")
    published = published_numbers()
    sections, rows = [], []
    for run_dir in map(Path, run_dirs):
        if not (run_dir / "final_metrics.json").exists():
            raise RecsysError(f"{run_dir}: no final_metrics.json, not a finished run")
        config = read_json(run_dir / "config.json", "run configuration")
        if config.get("task") == "click":
            raise RecsysError(f"{run_dir}: a click-prediction run; the report covers next-item runs")
        trainer = load_run(run_dir)
        part, info = _run_section(run_dir, trainer, examples, k)
        sections += part
        env = read_json(run_dir / "env.json", "run environment") if (run_dir / "env.json").exists() else {}
        recipe = _recipe_of(env)
        rows.append((run_dir, trainer, info, published.get(recipe, {}), recipe))
    table = [
        "<h2>Metrics (test split)</h2><table class='metrics'><tr><th>run</th><th>recipe</th><th>model / loss</th>"
        "<th>dataset</th><th>best epoch / run</th><th>HR@10</th><th>NDCG@10</th><th>MRR</th>"
        "<th>published HR@10 / NDCG@10</th><th>coverage</th></tr>"
    ]
    for run_dir, trainer, info, ref, recipe in rows:
        test = info["final"]["test"]
        pub = f"{_num(ref.get('hr@10'))} / {_num(ref.get('ndcg@10'))} ({_esc(ref.get('source', ''))})" if ref else "–"
        table.append(
            f"<tr><td><a href='#{_esc(run_dir.name)}'>{_esc(run_dir.name)}</a></td><td>{_esc(recipe or '–')}</td>"
            f"<td>{_esc(trainer.cfg.model_name)} / {_esc(trainer.cfg.loss.name)}</td><td>{_esc(trainer.cfg.data.dataset)}</td>"
            f"<td class='num'>{info['final'].get('best_epoch')} / {info['final'].get('epochs_run')}</td>"
            f"<td class='num'>{_num(test.get('hr@10'))}</td><td class='num'>{_num(test.get('ndcg@10'))}</td>"
            f"<td class='num'>{_num(test.get('mrr'))}</td><td>{pub}</td>"
            f"<td class='num'>{info['stats']['coverage']:.1%}</td></tr>"
        )
    table.append("</table>")
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>recsys report</title>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{CSS}</style></head><body>"
        f"<h1>recsys report</h1><p class='small'>{len(rows)} run(s), written {when}. Full ranking over every "
        "item; published numbers are citations (recipes/published.toml), not our measurements.</p>"
        + "".join(table)
        + "".join(sections)
        + "</body></html>\n"
    )
    out = Path(out)
    make_folder(out.parent)
    atomic_write_bytes(out, page.encode("utf-8"))
    return out


def _recipe_of(env: dict) -> str | None:
    """The packaged recipe a run was trained from (recipes/NAME.toml), as its env.json records it."""
    return env.get("recipe")
