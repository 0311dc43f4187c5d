"""Export a trained run for serving elsewhere: item (and user) embeddings, raw ids, the encoder.

    recsys export RUN_DIR --out DIR [--users test|valid|none] [--histories FILE] [--no-encoder] [--onnx]

The export folder holds
- ``item_embeddings.npy`` [num_items, D] float32 — row r is the item ``item_ids.parquet`` row r names
- ``item_ids.parquet``    (row, item_id, title) with the raw item ids (and titles where the catalogue has text)
- ``user_embeddings.npy`` + ``user_ids.parquet`` (row, user_id, seen_rows) — for the users of a split or
                          the histories of a file; ``seen_rows`` lets retrieval skip what they saw
- ``encoder.pt2``         the encoder as a ``torch.export`` program (``torch.export.load(path).module()``):
                          a [B, max_seq_len] left-padded id window -> [B, D], any B (with HSTU's time
                          bias also the window's timestamps [B, max_seq_len] and the request time [B]:
                          the manifest's ``encoder_inputs``); SASRec, BERT4Rec, HSTU, Recformer and their
                          variants all capture. An encoder it could not capture would be written as
                          TorchScript ``encoder.pt`` instead (torch 2.13 deprecates it); the manifest's
                          ``encoder`` names the format
- ``encoder.onnx``        with ``--onnx``: the same encoder as ONNX (inputs ``item_ids`` [, ``timestamps``,
                          ``query_time``], output ``user_vectors``, any batch size), checked in onnxruntime
- ``model.safetensors``   the model's weights (state_dict) as safetensors: plain tensors, no code runs on load
- ``manifest.json``       model, dataset, dimension, similarity (dot or cosine), whether vectors are
                          normalised, recsys version, and the sha256 and row count of every file.

Cosine models (trained with ``loss.l2_normalize``) are exported with unit-norm vectors, so an inner-product
index ranks exactly as the evaluator does. Everything is written into a temporary folder beside ``DIR``
and renamed at the end: a crash never leaves a half export that looks whole.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from . import __version__
from .data.batching import padded_windows, seen_items_csr
from .data.cards import sha256_of
from .data.readers import DataError, read_text
from .files import make_folder, read_json
from .metrics import check_finite
from .train import Trainer

MANIFEST = "manifest.json"


class _UserEncoder(torch.nn.Module):
    """What is exported: a fixed-width id window [B, L] -> the (normalised) user vector; a model that
    reads time (HSTU's time bias) also takes its items' timestamps [B, L] and the request time [B]."""

    def __init__(self, model, normalize: bool):
        super().__init__()
        self.model = model
        self.normalize = normalize
        self.timed = bool(getattr(model.cfg, "use_time_bias", False))
        self.eval()  # what is exported is inference: no dropout, and the exporter's mode check agrees

    def forward(
        self, item_ids: torch.Tensor, timestamps: torch.Tensor | None = None, query_time: torch.Tensor | None = None
    ) -> torch.Tensor:
        users = self.model.user_vectors(item_ids, timestamps, query_time)
        return F.normalize(users, dim=-1) if self.normalize else users


ENCODER_FILES = {"torch.export": "encoder.pt2", "torchscript": "encoder.pt"}


def _examples(wrapped: torch.nn.Module, max_seq_len: int) -> tuple[tuple, tuple]:
    """(an example batch to capture with, another batch size and other lengths to check the capture on)."""
    example_ids = torch.zeros(2, max_seq_len, dtype=torch.long)
    example_ids[:, -3:] = torch.tensor([1, 2, 3])
    check_ids = torch.zeros(3, max_seq_len, dtype=torch.long)  # another batch size, other lengths
    check_ids[0, -1:], check_ids[1, -min(7, max_seq_len) :], check_ids[2] = 2, 3, 1
    example, check = (example_ids,), (check_ids,)
    if wrapped.timed:  # times an hour apart; the request a day after the last
        example, check = (
            (
                ids,
                torch.arange(max_seq_len).expand_as(ids) * 3600 * (ids != 0),
                torch.full((len(ids),), max_seq_len * 3600 + 86400),
            )
            for ids in (example_ids, check_ids)
        )
    return example, check


ONNX_FILE = "encoder.onnx"
ONNX_INPUTS = ("item_ids", "timestamps", "query_time")


@torch.no_grad()
def save_onnx(wrapped: torch.nn.Module, max_seq_len: int, folder: Path) -> None:
    """Write the encoder as ONNX (``encoder.onnx``: inputs ``item_ids`` [B, L] int64 (and, for a timed
    encoder, ``timestamps`` [B, L], ``query_time`` [B]), output ``user_vectors`` [B, D], any B), then run it
    in onnxruntime on another batch and refuse it unless it gives the module's vectors."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(
            f"ONNX export needs onnx, onnxscript and onnxruntime: pip install recsys[onnx] ({err})"
        ) from None
    example, check = _examples(wrapped, max_seq_len)
    names = list(ONNX_INPUTS[: len(example)])
    # the exporter's registry logs a warning per torchvision operator it skips (none is used here)
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)  # torch's exporter about its own internals
        try:
            program = torch.onnx.export(
                wrapped,
                example,
                dynamo=True,
                input_names=names,
                output_names=["user_vectors"],
                dynamic_shapes=tuple({0: torch.export.Dim.AUTO} for _ in example),
                verbose=False,
            )
        finally:
            registry_log.setLevel(level)
    program.save(str(folder / ONNX_FILE))
    runtime = onnxruntime.InferenceSession(str(folder / ONNX_FILE), providers=["CPUExecutionProvider"])
    got = runtime.run(None, {name: t.numpy() for name, t in zip(names, check)})[0]
    if not np.allclose(got, wrapped(*check).numpy(), rtol=1e-4, atol=1e-5):
        raise RuntimeError("the ONNX encoder differs from the module on another batch (onnxruntime)")


@torch.no_grad()
def save_encoder(wrapped: torch.nn.Module, max_seq_len: int, folder: Path) -> str:
    """Write the encoder into ``folder`` and return its format: a ``torch.export`` program where the
    capture works and reproduces the module on other batch sizes and history lengths, else TorchScript.
    A timed encoder (:class:`_UserEncoder`) takes timestamps and the request time as well."""
    example, check = _examples(wrapped, max_seq_len)
    try:
        program = torch.export.export(
            wrapped, example, dynamic_shapes=tuple({0: torch.export.Dim.AUTO} for _ in example), strict=False
        )
        if not torch.allclose(program.module()(*check), wrapped(*check), rtol=1e-4, atol=1e-5):
            raise RuntimeError("the captured program differs from the module on another batch")
        torch.export.save(program, str(folder / ENCODER_FILES["torch.export"]))
        return "torch.export"
    except Exception as err:  # noqa: BLE001 (any capture failure: data-dependent shapes, unsupported ops)
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        print(f"note: torch.export could not capture this encoder ({reason}); writing TorchScript instead")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)  # shapes are fixed by design
        warnings.simplefilter("ignore", category=DeprecationWarning)  # torch 2.13 deprecates TorchScript
        torch.jit.trace(wrapped, example, check_trace=False).save(str(folder / ENCODER_FILES["torchscript"]))
    return "torchscript"


def load_encoder(export_dir: str | Path, manifest: dict) -> torch.nn.Module:
    """The exported encoder of a (verified) export folder, whichever format it was written in."""
    fmt = manifest.get("encoder")
    if fmt not in ENCODER_FILES:
        raise DataError(f"{export_dir} has no exported encoder (format {fmt!r})")
    path = Path(export_dir) / ENCODER_FILES[fmt]
    if fmt == "torch.export":
        return torch.export.load(str(path)).module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        return torch.jit.load(str(path))


@torch.no_grad()
def user_vectors_for(
    trainer: Trainer,
    item_windows: np.ndarray,
    batch_size: int = 1024,
    timestamps: np.ndarray | None = None,
    query_times: np.ndarray | None = None,
) -> np.ndarray:
    """User vectors [N, D] for left-padded id windows [N, max_seq_len]; ``timestamps`` (the windows'
    times, [N, max_seq_len]) and ``query_times`` ([N], the time each vector is for) where the model reads
    time (HSTU's time bias)."""
    model = trainer.model.eval()
    out = []
    for b in range(0, len(item_windows), batch_size):
        ids = torch.from_numpy(item_windows[b : b + batch_size]).to(trainer.device)
        times = (
            ()
            if timestamps is None
            else tuple(
                torch.from_numpy(np.ascontiguousarray(t[b : b + batch_size])).to(trainer.device)
                for t in (timestamps, query_times)
            )
        )
        users = model.user_vectors(ids, *times)
        if trainer.cfg.loss.l2_normalize:
            users = F.normalize(users, dim=-1)
        out.append(users.cpu())
    return (
        torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, model.item_vectors().shape[1]), np.float32)
    )


def eval_set_windows(trainer: Trainer, eval_set) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An evaluation set's users as the evaluator sees them: left-padded id windows of their histories
    [N, max_seq_len], those items' timestamps, and each target's timestamp (the query time) [N]."""
    data, width = trainer.split.data, trainer.cfg.max_seq_len
    starts = data.seq_offsets[eval_set.users]
    ends = starts + eval_set.history_lengths
    return (
        padded_windows(data.item_ids, starts, ends, width),
        padded_windows(data.timestamps, starts, ends, width),
        np.asarray(data.timestamps[ends]),
    )


def read_histories(path: str | Path, trainer: Trainer) -> tuple[list[str], np.ndarray]:
    """A histories file: one line per user, ``user_key<TAB>item,item,...`` (raw ids, oldest first)."""
    path = Path(path)
    keys, windows = [], []
    max_len = trainer.cfg.max_seq_len
    data = trainer.split.data
    for number, line in enumerate(read_text(path).splitlines(), start=1):  # one line per user
        if not line.strip():
            continue
        key, sep, items = line.partition("\t")
        if not sep or not items.strip():
            raise DataError(f"{path}, line {number}: expected 'user<TAB>item,item,...'")
        raw = [x.strip() for x in items.split(",") if x.strip()]
        try:
            ids = data.item_index(raw)
        except DataError as err:
            raise DataError(f"{path}, line {number}: {err}") from None
        keys.append(key)
        windows.append(ids[-max_len:])
    out = np.zeros((len(windows), max_len), dtype=np.int64)
    for row, ids in enumerate(windows):  # one row per user
        out[row, max_len - len(ids) :] = ids
    return keys, out


def export_run(
    trainer: Trainer,
    out_dir: str | Path,
    users: str | None = "test",
    histories: str | Path | None = None,
    encoder: bool = True,
    item_text: pl.DataFrame | None = None,
    onnx: bool = False,
) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; export into a new folder")
    make_folder(out_dir.parent)
    cfg = trainer.cfg
    data = trainer.split.data
    normalize = cfg.loss.l2_normalize
    model = trainer.model.eval()
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        with torch.no_grad():
            items = model.item_vectors()[1 : data.num_items].detach().cpu()
            if normalize:
                items = F.normalize(items, dim=-1)
        check_finite(items, f"{trainer.run_dir}: item vectors to export")
        np.save(stage / "item_embeddings.npy", items.numpy().astype(np.float32))
        # the weights as safetensors: tensors only, read without unpickling anything
        from safetensors.torch import save_file

        save_file(
            {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            str(stage / "model.safetensors"),
            metadata={"model": cfg.model_name},
        )
        raw = data.item_raw_ids[1:]
        id_frame = pl.DataFrame({"row": np.arange(len(raw)), "item_id": pl.Series([str(x) for x in raw])})
        if item_text is not None:
            text = item_text.select(pl.col("item_id").cast(pl.Utf8), "title")
            id_frame = id_frame.join(text, on="item_id", how="left", maintain_order="left")
        id_frame.write_parquet(stage / "item_ids.parquet")

        user_keys: list[str] = []
        timestamps = query_times = None
        if histories is not None:
            if getattr(model.cfg, "use_time_bias", False):
                raise DataError(
                    f"{histories}: this model reads time (time bias) and a histories file has none; "
                    "export the users of a split instead (--users test or valid)"
                )
            user_keys, windows = read_histories(histories, trainer)
            seen = [w[w > 0] - 1 for w in windows]  # item rows of each (window of) history
        elif users in ("test", "valid"):
            eval_set = trainer.split.test if users == "test" else trainer.split.valid
            if eval_set is None:
                raise DataError(f"split {cfg.data.split!r} has no {users} set")
            windows, timestamps, query_times = eval_set_windows(trainer, eval_set)
            user_keys = [str(x) for x in data.user_raw_ids[eval_set.users]]
            _, seen_items = seen_items_csr(trainer.split, eval_set, slice(0, len(eval_set)))
            seen = np.split(seen_items.numpy() - 1, np.cumsum(eval_set.history_lengths)[:-1])
        if user_keys:
            np.save(
                stage / "user_embeddings.npy",
                user_vectors_for(trainer, windows, timestamps=timestamps, query_times=query_times),
            )
            pl.DataFrame(
                {
                    "row": np.arange(len(user_keys)),
                    "user_id": user_keys,
                    "seen_rows": pl.Series([s.tolist() for s in seen], dtype=pl.List(pl.Int64)),
                }
            ).write_parquet(stage / "user_ids.parquet")

        encoder_format, encoder_inputs = None, None
        if encoder:
            wrapped = _UserEncoder(model.cpu(), normalize).eval()
            encoder_format = save_encoder(wrapped, cfg.max_seq_len, stage)
            encoder_inputs = ["item_ids", "timestamps", "query_time"] if wrapped.timed else ["item_ids"]
            if onnx:  # the same encoder for onnxruntime, checked against the module
                save_onnx(wrapped, cfg.max_seq_len, stage)
            model.to(trainer.device)

        files = {}
        for path in sorted(stage.iterdir()):
            rows = None
            if path.suffix == ".npy":
                rows = int(np.load(path, mmap_mode="r").shape[0])
            elif path.suffix == ".parquet":
                rows = pl.read_parquet(path).height
            files[path.name] = {"sha256": sha256_of(path), "rows": rows}
        manifest = {
            "format": "recsys-export-1",
            "recsys_version": __version__,
            "model": cfg.model_name,
            "dataset": trainer.data.info,
            "dimension": int(items.shape[1]),
            "num_items": int(items.shape[0]),
            "similarity": "cosine" if normalize else "dot",
            "normalized": normalize,
            # a model's learned repeat score (recsys.models.layers.repeat): what recsys ranks is the
            # similarity plus this for the items of the user's window; an index holds the similarity alone
            "repeat_bias": None if getattr(model, "repeat_bias", None) is None else float(model.repeat_bias.detach()),
            "max_seq_len": cfg.max_seq_len,
            "encoder": encoder_format,
            "encoder_inputs": encoder_inputs,
            "encoder_input": "int64 [batch, max_seq_len] left-padded internal item ids (row + 1 of item_ids.parquet; 0 = padding)",
            "users": "histories file" if histories is not None else users,
            "files": files,
            "config": cfg.to_dict(),
        }
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(stage, out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out_dir


def read_manifest(export_dir: str | Path, verify: bool = True) -> dict:
    """The manifest, after checking that every file it lists is there with its checksum and row count."""
    export_dir = Path(export_dir)
    path = export_dir / MANIFEST
    if not path.exists():
        raise DataError(f"{export_dir}: no {MANIFEST}; not a recsys export (or an unfinished one)")
    manifest = read_json(path, "export manifest")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise DataError(f"{path}: key 'files' missing; not a recsys export manifest")
    if verify:
        for name, spec in manifest["files"].items():
            f = export_dir / name
            if not f.exists():
                raise DataError(f"{export_dir}: {name} is listed in the manifest but missing")
            if sha256_of(f) != spec["sha256"]:
                raise DataError(f"{export_dir}: {name} does not match its manifest checksum (changed after export?)")
        emb = np.load(export_dir / "item_embeddings.npy", mmap_mode="r")
        if emb.shape != (manifest["num_items"], manifest["dimension"]):
            raise DataError(
                f"{export_dir}: item_embeddings.npy is {emb.shape}, the manifest says "
                f"({manifest['num_items']}, {manifest['dimension']})"
            )
    return manifest
