"""Dataset cards: where a dataset's files are, how to read them and what they must contain.

A card is ``datasets/<name>.toml`` at the top of the repository (or in ``RECSYS_CARDS``). It names the
reader, the folder under the data directory, one or more file *variants* (e.g. the complete official
ML-1M ``ratings.dat`` and the partial file we hold), each with its sha256 and expected counts, and
optionally an official download (archive URL + members). Files are looked up in, in order:
``--data-dir`` / ``RECSYS_DATA`` ``/<folder>/``, then the cache (``RECSYS_CACHE``, default
``~/.cache/recsys``) ``/datasets/<folder>/``; if none is there and the card has a download, the archive
is fetched into the cache, checked and extracted (members only, never outside the target folder).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import tomllib
import typing
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import ConfigError, check_value
from ..errors import DataError
from ..files import sha256_of

if TYPE_CHECKING:  # the readers import polars: loaded when a file is read, not to list or find cards
    import polars as pl

    from .readers import Interactions

REPO_ROOT = Path(__file__).resolve().parents[2]


def cards_dir() -> Path:
    """RECSYS_CARDS, else the repository's datasets/ (a checkout or an editable install), else the copy
    an installed package carries (recsys/_cards, see pyproject.toml)."""
    if "RECSYS_CARDS" in os.environ:
        folder = Path(os.environ["RECSYS_CARDS"])
        if not folder.is_dir():  # a typo would otherwise list no dataset at all
            raise DataError(f"RECSYS_CARDS={folder}: no such folder (it holds the dataset cards, NAME.toml)")
        return folder
    repo_cards = REPO_ROOT / "datasets"
    return repo_cards if repo_cards.is_dir() else Path(__file__).resolve().parents[1] / "_cards"


def cache_dir() -> Path:
    return Path(os.environ.get("RECSYS_CACHE", Path.home() / ".cache" / "recsys"))


@dataclass
class Variant:
    file: str
    sha256: str | None = None
    git_blob: str | None = None  # `git hash-object` id, where only that is published
    users: int | None = None
    items: int | None = None
    interactions: int | None = None
    note: str = ""


@dataclass
class Card:
    name: str
    folder: str
    reader: str
    variants: list[Variant]
    description: str = ""
    citation: str = ""
    reader_options: dict = field(default_factory=dict)
    item_text: dict | None = None
    # item attribute ids (brands, categories): {file, format (readers.ITEM_ATTRIBUTE_FORMATS), sha256}
    item_attributes: dict | None = None
    download: dict | None = None
    path: Path | None = None


def list_cards() -> list[str]:
    return sorted(p.stem for p in cards_dir().glob("*.toml"))


def load_card(name: str) -> Card:
    """The card ``name``, every key checked: an unknown or missing key, a value of the wrong type, a path
    that leaves its folder or a reader option the reader does not take is an error naming the card file
    and the key."""
    path = cards_dir() / f"{name}.toml"
    if not path.exists():
        raise DataError(f"unknown dataset {name!r}; known: {list_cards()} (cards live in {cards_dir()})")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a valid card ({err})") from None
    return _card_from_toml(raw, path)


# a card's keys: key -> (the type it takes, whether it is required); its tables' keys likewise
_CARD_KEYS = {
    "name": (str, True),
    "folder": (str, True),
    "reader": (str, True),
    "variants": (list, True),
    "description": (str, False),
    "citation": (str, False),
    "reader_options": (dict, False),
    "item_text": (dict, False),
    "item_attributes": (dict, False),
    "download": (dict, False),
}
_VARIANT_KEYS = {
    "file": (str, True),
    "sha256": (str, False),
    "git_blob": (str, False),
    "users": (int, False),
    "items": (int, False),
    "interactions": (int, False),
    "note": (str, False),
}
_SIDE_KEYS = {
    "item_text": {"file": (str, True), "format": (str, True)},
    "item_attributes": {"file": (str, True), "format": (str, True), "sha256": (str, True)},
    "download": {"url": (str, True), "file": (str, False), "members": (dict, False), "sha256": (str, False)},
}


def _check_keys(path: Path, where: str, raw: dict, keys: dict[str, tuple[type, bool]]) -> None:
    """Unknown, missing and mistyped keys of one table of the card ``path`` (``where``: the table's prefix)."""
    for key in raw:
        if key not in keys:
            raise DataError(f"{path}: unknown key '{where}{key}'; allowed: {list(keys)}")
    for key, (kind, required) in keys.items():
        if key not in raw:
            if required:
                raise DataError(f"{path}: missing key '{where}{key}'")
            continue
        value = raw[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            what = {str: "a string", int: "an integer", list: "a list", dict: "a table"}[kind]
            raise DataError(f"{path}: '{where}{key}' must be {what}, got {value!r}")
        if kind is int and value < 0:
            raise DataError(f"{path}: '{where}{key}' must be >= 0, got {value}")


def _check_file_name(path: Path, key: str, value: str) -> None:
    """A file or folder a card names stays below the data folder: relative, no '..'."""
    parts = Path(value).parts
    if not value or Path(value).is_absolute() or ".." in parts or value.startswith("~"):
        raise DataError(f"{path}: '{key}' = {value!r} must be a relative path inside the data folder (no '..')")


def _check_digest(path: Path, key: str, value: str, length: int) -> None:
    if len(value) != length or any(c not in "0123456789abcdef" for c in value):
        raise DataError(f"{path}: '{key}' must be {length} lowercase hex digits, got {value!r}")


def _card_from_toml(raw: dict, path: Path) -> Card:
    from .readers import READERS

    _check_keys(path, "", raw, _CARD_KEYS)
    if raw["name"] != path.stem:  # the name is how it is found, and names its cache folder
        raise DataError(f"{path}: 'name' is {raw['name']!r}; a card's name is its file's name, {path.stem!r}")
    if raw["reader"] not in READERS:
        raise DataError(f"{path}: 'reader' must be one of {sorted(READERS)}, got {raw['reader']!r}")
    _check_file_name(path, "folder", raw["folder"])
    variants = _variants(path, raw["variants"])
    _check_side_tables(path, raw)
    options = _reader_options(path, raw["reader"], raw.get("reader_options", {}))
    return Card(**{**raw, "variants": variants, "reader_options": options}, path=path)


def _variants(path: Path, raw: list) -> list[Variant]:
    if not raw:
        raise DataError(f"{path}: 'variants' is empty; a card names at least one file ([[variants]] file = ...)")
    variants = []
    for i, variant in enumerate(raw):
        where = f"variants[{i}]."
        if not isinstance(variant, dict):
            raise DataError(f"{path}: 'variants[{i}]' must be a table, got {variant!r}")
        _check_keys(path, where, variant, _VARIANT_KEYS)
        _check_file_name(path, where + "file", variant["file"])
        for key, length in (("sha256", 64), ("git_blob", 40)):
            if key in variant:
                _check_digest(path, where + key, variant[key], length)
        variants.append(Variant(**variant))
    return variants


def _check_side_tables(path: Path, raw: dict) -> None:
    """item_text, item_attributes and download: their keys, formats, file names and digests."""
    from .readers import ITEM_ATTRIBUTE_FORMATS, ITEM_TEXT_FORMATS

    for side, keys in _SIDE_KEYS.items():
        if side in raw:
            _check_keys(path, f"{side}.", raw[side], keys)
            if "file" in raw[side]:
                _check_file_name(path, f"{side}.file", raw[side]["file"])
    if "item_text" in raw and raw["item_text"]["format"] not in ITEM_TEXT_FORMATS:
        raise DataError(f"{path}: 'item_text.format' must be one of {list(ITEM_TEXT_FORMATS)}")
    if "item_attributes" in raw:
        if raw["item_attributes"]["format"] not in ITEM_ATTRIBUTE_FORMATS:
            raise DataError(f"{path}: 'item_attributes.format' must be one of {list(ITEM_ATTRIBUTE_FORMATS)}")
        _check_digest(path, "item_attributes.sha256", raw["item_attributes"]["sha256"], 64)
    if "download" in raw:
        download = raw["download"]
        if ("file" in download) == ("members" in download):
            raise DataError(f"{path}: 'download' names a 'file' or an archive's 'members', one of the two")
        for member, name in download.get("members", {}).items():
            if not isinstance(name, str):
                raise DataError(f"{path}: 'download.members.{member}' must be a file name, got {name!r}")
            _check_file_name(path, f"download.members.{member}", name)
        if "sha256" in download:
            _check_digest(path, "download.sha256", download["sha256"], 64)


def _reader_options(path: Path, reader: str, options: dict) -> dict:
    """The reader's keyword arguments, each of the type the reader declares; its required ones present."""
    import inspect

    from .readers import READERS

    params = list(inspect.signature(READERS[reader]).parameters.values())[1:]  # after the file's path
    names = [p.name for p in params]
    for key in options:
        if key not in names:
            raise DataError(f"{path}: unknown key 'reader_options.{key}'; reader {reader!r} takes {names}")
    for p in params:
        if p.default is inspect.Parameter.empty and p.name not in options:
            raise DataError(f"{path}: reader {reader!r} needs 'reader_options.{p.name}'")
    hints = typing.get_type_hints(READERS[reader])
    try:
        return {key: check_value(hints[key], value, f"reader_options.{key}") for key, value in options.items()}
    except ConfigError as err:
        raise DataError(f"{path}: {err}") from None


def git_blob_of(path: Path) -> str:
    h = hashlib.sha1()
    h.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: Path, variant: Variant) -> str:
    """sha256 of ``path``; raises when it differs from the card's sha256 or git blob id."""
    digest = sha256_of(path)
    if variant.sha256 and digest != variant.sha256:
        raise DataError(f"{path}: sha256 {digest} differs from the card's {variant.sha256} (a different file?)")
    if variant.git_blob and git_blob_of(path) != variant.git_blob:
        raise DataError(f"{path}: git blob id {git_blob_of(path)} differs from the card's {variant.git_blob}")
    return digest


def _data_root(data_dir: str | Path | None) -> str | Path | None:
    """The folder of dataset folders: --data-dir, else RECSYS_DATA, else none."""
    return data_dir or os.environ.get("RECSYS_DATA")


def _search_dirs(card: Card, data_dir: str | Path | None) -> list[Path]:
    dirs = []
    root = _data_root(data_dir)
    if root:
        dirs.append(Path(root) / card.folder)
    dirs.append(cache_dir() / "datasets" / card.folder)
    return dirs


def resolve_file(card: Card, data_dir: str | Path | None = None, download: bool = True) -> tuple[Path, Variant]:
    """The first variant found (cards list the complete official file first)."""
    dirs = _search_dirs(card, data_dir)
    for variant in card.variants:
        for d in dirs:
            if (d / variant.file).exists():
                return d / variant.file, variant
    root = _data_root(data_dir)
    # a data folder that does not exist is most likely a typo: said with whatever fails next
    where = f" (note: the data folder {root} does not exist)" if root and not Path(root).is_dir() else ""
    if download and card.download:
        target = dirs[-1]
        try:
            fetch_official(card, target)
        except DataError as err:
            raise DataError(f"{err}{where}") from None
        for variant in card.variants:
            if (target / variant.file).exists():
                return target / variant.file, variant
    looked = ", ".join(str(d) for d in dirs)
    files = ", ".join(v.file for v in card.variants)
    raise DataError(
        f"dataset {card.name!r}: none of [{files}] found in {looked}; set RECSYS_DATA or --data-dir"
        + ("" if card.download else " (this dataset has no official download)")
        + where
    )


def safe_extract(archive: Path, members: dict[str, str], target: Path) -> None:
    """Extract ``members`` (archive name -> file name) into ``target``; refuses paths leaving it."""
    target = target.resolve()
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        for member, out_name in members.items():
            if member not in names:
                raise DataError(f"{archive}: member {member!r} not in the archive")
            out = (target / out_name).resolve()
            if target not in out.parents:
                raise DataError(f"{archive}: member {member!r} would be written outside {target}")
            tmp = out.with_name(out.name + ".tmp")
            with zf.open(member) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, out)


def fetch_official(card: Card, target: Path) -> None:
    """Download the card's file or archive into ``target`` (extracting its members), checking each file
    against the card before it is moved into place."""
    spec = card.download
    url = spec["url"]
    target.mkdir(parents=True, exist_ok=True)
    print(f"downloading {card.name} from {url} ...")
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        archive = Path(tmp) / ("archive.zip" if "members" in spec else spec["file"])
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(archive, "wb") as out:
                shutil.copyfileobj(resp, out)
        except OSError as err:
            raise DataError(
                f"dataset {card.name!r}: download from {url} failed ({err}); put the files under "
                f"RECSYS_DATA/{card.folder}/ instead"
            ) from None
        if spec.get("sha256") and sha256_of(archive) != spec["sha256"]:
            raise DataError(f"{url}: checksum mismatch (expected {spec['sha256']}, got {sha256_of(archive)})")
        if "members" in spec:
            stage = Path(tmp) / "stage"
            stage.mkdir()
            safe_extract(archive, spec["members"], stage)
            names = list(spec["members"].values())
        else:
            stage, names = Path(tmp), [spec["file"]]
        variants = {v.file: v for v in card.variants}
        for name in names:
            if name in variants:
                verify_file(stage / name, variants[name])
        for name in names:
            os.replace(stage / name, target / name)


def check_counts(card: Card, variant: Variant, interactions: Interactions) -> dict[str, int]:
    """Users / items / interactions of the raw file against the card; raises naming every difference."""
    df = interactions.frame
    got = {"users": df["user_id"].n_unique(), "items": df["item_id"].n_unique(), "interactions": df.height}
    wrong = [
        f"{k}: expected {getattr(variant, k):,}, found {v:,}"
        for k, v in got.items()
        if getattr(variant, k) is not None and getattr(variant, k) != v
    ]
    if wrong:
        raise DataError(f"dataset {card.name!r} ({variant.file}) does not match its card: " + "; ".join(wrong))
    return got


@dataclass
class LoadedDataset:
    card: Card
    variant: Variant
    file: Path
    sha256: str
    interactions: Interactions
    counts: dict[str, int]


def locate_dataset(
    name: str, data_dir: str | Path | None = None, verify: bool = True, download: bool = True
) -> tuple[Card, Path, Variant, str]:
    """(card, file, variant, sha256) of a named dataset, its checksum verified; nothing parsed yet."""
    card = load_card(name)
    path, variant = resolve_file(card, data_dir, download=download)
    digest = verify_file(path, variant) if verify else sha256_of(path)
    if variant.note:
        print(f"[{card.name}] {variant.file}: {variant.note}")
    return card, path, variant, digest


def load_dataset(
    name: str, data_dir: str | Path | None = None, verify: bool = True, download: bool = True
) -> LoadedDataset:
    """Read a named dataset through its card, check checksum and counts."""
    card, path, variant, digest = locate_dataset(name, data_dir, verify, download)
    from .readers import READERS

    interactions = READERS[card.reader](path, **card.reader_options)
    counts = check_counts(card, variant, interactions) if verify else {}
    return LoadedDataset(card, variant, path, digest, interactions, counts)


def load_item_text(name: str, data_dir: str | Path | None = None) -> pl.DataFrame | None:
    """The card's item text (titles, genres) or None when the dataset has none."""
    card = load_card(name)
    if not card.item_text:
        return None
    for d in _search_dirs(card, data_dir):
        if (d / card.item_text["file"]).exists():
            from .readers import read_item_text

            return read_item_text(d / card.item_text["file"], card.item_text["format"])
    return None


def load_item_attributes(name: str, data_dir: str | Path | None = None) -> pl.DataFrame | None:
    """The card's item attributes (readers.read_item_attributes: item_id, attribute), the file checked
    against the card's sha256; None when the card declares none. A declared file that is missing is an
    error (a model that asks for attributes must not train without them)."""
    card = load_card(name)
    spec = card.item_attributes
    if not spec:
        return None
    for key in ("file", "format"):
        if key not in spec:
            raise DataError(f"{card.path}: item_attributes needs '{key}'")
    for d in _search_dirs(card, data_dir):
        path = d / spec["file"]
        if path.exists():
            digest = sha256_of(path)
            if spec.get("sha256") and digest != spec["sha256"]:
                raise DataError(f"{path}: sha256 {digest} differs from the card's {spec['sha256']} (a different file?)")
            from .readers import read_item_attributes

            return read_item_attributes(path, spec["format"])
    looked = ", ".join(str(d) for d in _search_dirs(card, data_dir))
    raise DataError(f"dataset {card.name!r}: its item attributes {spec['file']} are not in {looked}")
