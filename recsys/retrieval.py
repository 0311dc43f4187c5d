"""Retrieval stage on FAISS: build, save, load and search indexes over exported item embeddings.

Index types, chosen by name with parameters:
- ``flat``     exact inner product (``IndexFlatIP``)
- ``hnsw``     graph search; ``M`` (links per node, 32), ``ef_construction`` (200), ``ef_search`` (128)
- ``ivf_flat`` inverted lists; ``nlist`` (default 4 * sqrt(N)), ``nprobe`` (16)
- ``ivf_pq``   inverted lists + product quantisation; ``nlist``, ``m`` (sub-quantisers, 16),
               ``nbits`` (8), ``nprobe`` (16)

Cosine models are exported with unit-norm vectors, so inner product is the right metric for both.
Seen items are filtered at search time by over-fetching and dropping them. GPU FAISS is used when the
installed FAISS has it and ``use_gpu`` is set, never required. ``faiss`` is imported here only, so
``import recsys`` works without it.

An index folder holds ``index.faiss`` and ``index.json`` (type, parameters, and the export manifest's
identity: model, dimension, item count and the item embeddings' checksum), so an index is never
searched with another model's ids or vectors.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .data.batching import seen_items_csr
from .data.readers import DataError
from .evaluation import repeat_target_rows
from .export import eval_set_windows, read_manifest, user_vectors_for
from .files import IntegrityError, make_folder, read_json, sha256_of
from .metrics import check_finite, ranking_metric_sums, ranks_under_policy

INDEX_TYPES = ("flat", "hnsw", "ivf_flat", "ivf_pq")
DEFAULTS = {
    "flat": {},
    "hnsw": {"M": 32, "ef_construction": 200, "ef_search": 128},
    "ivf_flat": {"nlist": None, "nprobe": 16},
    "ivf_pq": {"nlist": None, "m": 16, "nbits": 8, "nprobe": 16},
}


# what FAISS accepts without misbehaving (a negative M made it allocate until the process was killed)
PARAM_RANGES = {
    "M": (2, 512),
    "ef_construction": (1, 1 << 20),
    "ef_search": (1, 1 << 20),
    "nlist": (1, 1 << 24),
    "nprobe": (1, 1 << 24),
    "m": (1, 4096),
    "nbits": (1, 16),
}


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("the retrieval stage needs FAISS: pip install faiss-cpu (or faiss-gpu)") from None
    return faiss


def index_params(kind: str, params: dict | None = None) -> dict:
    if kind not in INDEX_TYPES:
        raise ValueError(f"unknown index type {kind!r}; choose one of {list(INDEX_TYPES)}")
    merged = dict(DEFAULTS[kind])
    for key, value in (params or {}).items():
        if key not in merged:
            raise ValueError(f"index type {kind!r} has no parameter {key!r}; allowed: {sorted(merged)}")
        merged[key] = value
    for key, value in merged.items():
        if value is None and key == "nlist":  # chosen from the item count at build time
            continue
        low, high = PARAM_RANGES[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or value != int(value)
            or not low <= value <= high
        ):
            raise ValueError(f"index parameter {key} must be an integer in [{low}, {high}], got {value!r}")
        merged[key] = int(value)
    return merged


def build_index(vectors: np.ndarray, kind: str = "flat", params: dict | None = None, seed: int = 0) -> Any:
    """A FAISS inner-product index over ``vectors`` [N, D] (row r = item row r)."""
    faiss = _faiss()
    p = index_params(kind, params)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    check_finite(torch.from_numpy(x), "item vectors to index")
    n, d = x.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        # HNSW's graph is built for a metric; inner product is not one (and unnormalised dot-product
        # embeddings make it worse). Append sqrt(max|x|^2 - |x|^2) to each item and 0 to each query:
        # then |q - x|^2 = |q|^2 + max|x|^2 - 2 q.x, so L2 order is inner-product order (Bachrach et al. 2014).
        norms = (x * x).sum(1)
        x = np.hstack([x, np.sqrt(np.maximum(norms.max() - norms, 0))[:, None]]).astype(np.float32)
        index = faiss.IndexHNSWFlat(d + 1, int(p["M"]), faiss.METRIC_L2)
        index.hnsw.efConstruction = int(p["ef_construction"])
        index.hnsw.efSearch = int(p["ef_search"])
    else:
        nlist = int(p["nlist"] or max(1, min(n // 39, int(4 * math.sqrt(n)))))
        if nlist > n:
            raise ValueError(f"{kind}: nlist={nlist} is more than the {n:,} items to cluster")
        quantizer = faiss.IndexFlatIP(d)
        if kind == "ivf_flat":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            if d % int(p["m"]):
                raise ValueError(f"ivf_pq: dimension {d} must be divisible by m={p['m']}")
            index = faiss.IndexIVFPQ(quantizer, d, nlist, int(p["m"]), int(p["nbits"]), faiss.METRIC_INNER_PRODUCT)
            centroids = 2 ** int(p["nbits"])
            if n < 39 * centroids:  # FAISS would warn once per sub-quantiser (m times): say it once, here
                index.pq.cp.min_points_per_centroid = max(1, n // centroids)
                print(
                    f"note: ivf_pq: {n:,} items train {centroids} centroids per sub-quantiser (FAISS suggests "
                    f"at least {39 * centroids:,}); fewer bits (--param nbits=...) or a flat index may do better",
                    file=sys.stderr,
                )
        index.cp.seed = seed
        index.train(x)
        index.nprobe = int(p["nprobe"])
    index.add(x)
    return index


def set_search_params(index, kind: str, params: dict) -> None:
    if kind == "hnsw":
        index.hnsw.efSearch = int(params["ef_search"])
    elif kind in ("ivf_flat", "ivf_pq"):
        index.nprobe = int(params["nprobe"])


def search(
    index, queries: np.ndarray, k: int, exclude: Sequence[Sequence[int]] | None = None, batch_size: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores [Q, k], rows [Q, k]) per query; rows in ``exclude[q]`` are never returned.

    Over-fetches k + (the largest exclusion list) per batch, drops excluded rows, keeps the first k.
    Missing results (an index with fewer candidates) are row -1 with score -inf.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    faiss = _faiss()
    # an index over items augmented for L2 search (hnsw): queries get a 0, distances turn back into
    # inner products via |q|^2 + R^2 - d = 2 q.x, R^2 being every augmented item's squared norm
    augmented = index.metric_type == faiss.METRIC_L2 and index.d == q.shape[1] + 1
    if augmented:
        radius2 = float(np.square(index.reconstruct(0)).sum()) if index.ntotal else 0.0
        query_norms = (q * q).sum(1)
        q = np.ascontiguousarray(np.hstack([q, np.zeros((len(q), 1), np.float32)]))
    out_scores = np.full((len(q), k), -np.inf, dtype=np.float32)
    out_rows = np.full((len(q), k), -1, dtype=np.int64)
    for b in range(0, len(q), batch_size):
        block = q[b : b + batch_size]
        extra = max((len(exclude[i]) for i in range(b, b + len(block))), default=0) if exclude is not None else 0
        fetch = min(k + extra, index.ntotal)
        scores, rows = index.search(block, fetch)
        if augmented:
            scores = (query_norms[b : b + len(block), None] + radius2 - scores) / 2
        if exclude is not None and extra:
            for i in range(len(block)):  # one query at a time: only its own short exclusion list
                banned = np.isin(rows[i], np.asarray(exclude[b + i], dtype=np.int64))
                keep = rows[i][~banned & (rows[i] >= 0)][:k]
                out_rows[b + i, : len(keep)] = keep
                out_scores[b + i, : len(keep)] = scores[i][~banned & (rows[i] >= 0)][:k]
        else:
            width = min(k, fetch)
            out_rows[b : b + len(block), :width] = rows[:, :width]
            out_scores[b : b + len(block), :width] = scores[:, :width]
    return out_scores, out_rows


def save_index(
    index, kind: str, params: dict, export_dir: str | Path, out_dir: str | Path, build_seconds: float
) -> Path:
    """Write ``index.faiss`` + ``index.json`` into ``out_dir`` atomically (temp folder, then rename)."""
    faiss = _faiss()
    manifest = read_manifest(export_dir)
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; build into a new folder")
    make_folder(out_dir.parent)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        faiss.write_index(index, str(stage / "index.faiss"))
        meta = {
            "type": kind,
            "params": params,
            "build_seconds": build_seconds,
            "export_dir": os.path.relpath(Path(export_dir).resolve(), out_dir.resolve().parent),
            "model": manifest["model"],
            "dimension": manifest["dimension"],
            "num_items": manifest["num_items"],
            "item_embeddings_sha256": manifest["files"]["item_embeddings.npy"]["sha256"],
            "index_sha256": sha256_of(stage / "index.faiss"),  # checked before FAISS reads the file
        }
        (stage / "index.json").write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(stage, out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out_dir


def load_index(index_dir: str | Path, export_dir: str | Path | None = None) -> tuple[Any, dict, dict, Path]:
    """(index, index.json, export manifest, export dir); refuses an index built for other embeddings."""
    faiss = _faiss()
    index_dir = Path(index_dir)
    meta_path = index_dir / "index.json"
    if not meta_path.exists():
        raise DataError(f"{index_dir}: no index.json; not a recsys index folder")
    meta = read_json(meta_path, "index description")
    missing = [
        k
        for k in ("type", "params", "export_dir", "model", "num_items", "item_embeddings_sha256", "index_sha256")
        if not isinstance(meta, dict) or k not in meta
    ]
    if missing:
        raise DataError(f"{meta_path}: key {missing[0]!r} missing (an index from an older recsys: build it again)")
    index_file = index_dir / "index.faiss"
    if not index_file.is_file() or sha256_of(index_file) != meta["index_sha256"]:
        raise IntegrityError(
            f"{index_file}: does not match the checksum recorded when the index was built "
            "(changed, truncated or missing): build it again"
        )
    export_dir = Path(export_dir) if export_dir else (index_dir.parent / meta["export_dir"])
    manifest = read_manifest(export_dir)
    if manifest["files"]["item_embeddings.npy"]["sha256"] != meta["item_embeddings_sha256"]:
        raise DataError(
            f"{index_dir} was built for other item embeddings than {export_dir} holds "
            f"(model {meta['model']}, {meta['num_items']} items)"
        )
    index = faiss.read_index(str(index_dir / "index.faiss"))
    dims = (manifest["dimension"], manifest["dimension"] + 1) if meta["type"] == "hnsw" else (manifest["dimension"],)
    if index.ntotal != manifest["num_items"] or index.d not in dims:
        raise DataError(
            f"{index_dir}: the index holds {index.ntotal} x {index.d}, the export "
            f"{manifest['num_items']} x {manifest['dimension']}"
        )
    set_search_params(index, meta["type"], meta["params"])
    return index, meta, manifest, export_dir


def evaluate_through_index(
    trainer, index, which: str = "test", ks: Sequence[int] = (1, 5, 10, 20), exclude_seen: bool = True
) -> dict:
    """HR@k / NDCG@k / MRR@k of a run's model when items come from ``index`` instead of the exact GEMM.

    Rank = position of the target in the index's top-K (K = max ks), or "beyond K" when it is missing:
    every @k metric with k <= K is exact for the index's ranking. Listed items the index scores exactly
    like the target count as the run's ``eval.tie_policy`` says (ties beyond the K listed are not seen), and targets that repeat a history item as its
    ``eval.repeat_targets`` says (as in the exact evaluator). Non-finite user or item vectors are an
    error. Compare with the exact evaluator to see what approximate search costs.
    """
    split, cfg = trainer.split, trainer.cfg.eval
    if getattr(trainer.model, "repeat_bias", None) is not None and not exclude_seen:
        raise ValueError(
            f"run {trainer.run_dir}: its model adds a learned repeat score to the items a user has read, which an "
            "index of item vectors does not hold; rank with the seen items excluded (exclude_seen=True) or use "
            "recsys evaluate"
        )
    eval_set = split.test if which == "test" else split.valid
    windows, timestamps, query_times = eval_set_windows(trainer, eval_set)
    queries = user_vectors_for(trainer, windows, timestamps=timestamps, query_times=query_times)
    check_finite(torch.as_tensor(queries), f"run {trainer.run_dir}, {which} split through the index: user vectors")
    repeat = np.zeros(len(eval_set), dtype=bool)
    exclude = None
    policy = cfg.repeat_targets if exclude_seen else "keep"
    if exclude_seen:
        rows, seen = seen_items_csr(split, eval_set, slice(0, len(eval_set)))
        repeat = repeat_target_rows((rows, seen), torch.from_numpy(eval_set.targets)).numpy()
        exclude = np.split(seen.numpy() - 1, np.cumsum(eval_set.history_lengths)[:-1])
        # the target's own row stays a candidate; "apart": a repeat user's history stays one too
        exclude = [
            e[e != t - 1] if not (r and policy == "apart") else e[:0]
            for e, t, r in zip(exclude, eval_set.targets, repeat)
        ]
    K = max(ks)
    start = time.perf_counter()
    scores, rows = search(index, queries, K, exclude=exclude)
    seconds = time.perf_counter() - start
    hit = rows == (eval_set.targets[:, None] - 1)  # [E, K]
    found = hit.any(1)
    target_scores = np.where(found, scores[np.arange(len(rows)), hit.argmax(1)], np.inf)  # [E]
    listed = rows >= 0
    above = np.where(found, (listed & (scores > target_scores[:, None])).sum(1), K)
    ties = np.where(found, (listed & (scores == target_scores[:, None])).sum(1) - 1, 0)
    ranks, tied = ranks_under_policy(torch.from_numpy(above), torch.from_numpy(ties), cfg.tie_policy)
    new = torch.from_numpy(~repeat)
    if policy == "keep":
        new = torch.ones_like(new)
    sums = ranking_metric_sums(ranks[new], ks, None if tied is None else tied[new])
    users = int(new.sum()) if policy == "apart" else len(eval_set)
    out = {name: value / max(users, 1) for name, value in sums.items() if "@" in name}
    out.update(
        num_users=users,
        search_seconds=seconds,
        queries_per_second=len(eval_set) / seconds,
        tie_policy=cfg.tie_policy,
        repeat_targets={"users": int(repeat.sum()), "policy": policy},
    )
    return out


def timed_build(vectors: np.ndarray, kind: str, params: dict | None = None) -> tuple[Any, float]:
    start = time.perf_counter()
    index = build_index(vectors, kind, params)
    return index, time.perf_counter() - start
