"""Sharing frozen dataset versions: one-file packs, the local store cache, and names for stores.

- `pack`: a store as one zip file (`NAME-VERSION.zarr.zip`) that zarr reads directly, locally
  or over a URL; the same arrays, so the same digests.
- `get`: copy a shared store (any location `store.zarr_store` reads) into the local cache,
  checking every array against `datasets.lock` while it is copied; a mismatch leaves nothing.
- `resolve`: a location for every reader: a path, a URL, or `NAME[@VERSION][:SOURCE]`, a store
  in the cache (`$VISATT_HOME/stores/NAME-VERSION-SOURCE.zarr`).
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import zarr
from tqdm.auto import tqdm

from pipelines import store
from pipelines.datasets import DATASETS, get_dataset
from pipelines.lock import Lock, compare
from pipelines.sources import visatt_home
from pipelines.store import StoreError

_REF = re.compile(r"^(?P<name>[a-z0-9-]+?)(?:@(?P<version>[0-9][0-9A-Za-z.+-]*))?(?::(?P<source>[a-z]+))?$")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed entry times: packing the same store twice gives the same bytes


def cache_dir() -> Path:
    return visatt_home() / "stores"


def cached_path(name: str, version: str, source: str) -> Path:
    return cache_dir() / f"{name}-{version}-{source}.zarr"


def parse_ref(text: str) -> tuple[str, str, str] | None:
    """(name, version, source) of 'NAME[@VERSION][:SOURCE]' for a known dataset (defaults: the
    dataset's current version and first source), else None."""
    m = _REF.match(str(text))
    if not m or m["name"] not in DATASETS:
        return None
    spec = get_dataset(m["name"])
    source = m["source"] or spec.family.sources[0]
    if source not in spec.family.sources:
        raise StoreError(f"{text}: {m['name']} is built from {' or '.join(spec.family.sources)}, not {source!r}")
    return m["name"], m["version"] or spec.version, source


def resolve_is_path(location) -> bool:
    """True when `location` names a path that exists (a path wins over a dataset name)."""
    return isinstance(location, Path) or os.path.lexists(str(location))


def resolve(location) -> Path | str:
    """A URL stays a URL; an existing path is that path; 'NAME[@VERSION][:SOURCE]' is the cached
    store of that version (a one-line StoreError saying how to get it when it is not cached)."""
    if store.is_url(location):
        return str(location)
    path = Path(location)
    if resolve_is_path(location):
        return path
    ref = parse_ref(str(location))
    if ref is None:
        return path
    cached = cached_path(*ref)
    if not cached.exists():
        name, version, source = ref
        dataset = get_dataset(name)
        options = "" if source == dataset.family.sources[0] else f" --source {source}"
        if version != dataset.version:
            build = f"this visatt builds {dataset.version} only"
        elif Lock().entry(name, version, source) is not None:
            build = f"`visatt-data build {name}{options} --cache` builds it there"
        else:  # only a locked version goes into the cache
            build = f"`visatt-data build {name}{options} --out PATH` builds one (unlocked) to pass as PATH"
        raise StoreError(f"{name} {version} ({source}) is not in the cache ({cache_dir()}): `visatt-data get "
                         f"{name}@{version} --from LOCATION` copies a shared one; {build}")
    return cached


# ---------------------------------------------------------------- pack


def pack_name(attrs: dict) -> str:
    """'NAME-VERSION.zarr.zip' ('-sample' for the sample source, 'unlocked' for a custom build)."""
    source = (attrs.get("recipe") or {}).get("source")
    suffix = f"-{source}" if source == "sample" else ""
    return f"{attrs['dataset']}-{attrs.get('version') or 'unlocked'}{suffix}.zarr.zip"


def pack(location, out=None, *, overwrite: bool = False, progress: bool = True) -> Path:
    """Write the store folder at `location` as one zip file and check that the packed file gives
    every recorded digest. The entries are stored, not compressed again (the chunks already are),
    so zarr reads a chunk of a packed file with one range request."""
    src = Path(location)
    if not src.is_dir():
        raise StoreError(f"{src}: not a store folder (pack takes a folder written by `visatt-data build`)")
    attrs = store.store_attrs(src)
    out = Path(out) if out is not None else Path(pack_name(attrs))
    if out.is_dir():
        out = out / pack_name(attrs)
    if out.exists() and not overwrite:
        raise StoreError(f"{out}: already exists (use --overwrite to replace it)")
    files = sorted(p for p in src.rglob("*") if p.is_file())
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
            for p in tqdm(files, unit="file", desc=f"pack {src.name}", disable=not progress, leave=False):
                info = zipfile.ZipInfo(p.relative_to(src).as_posix(), date_time=_ZIP_TIME)
                info.external_attr = 0o644 << 16
                z.writestr(info, p.read_bytes(), compress_type=zipfile.ZIP_STORED)
        recorded = attrs.get("digests", {})
        differ = compare(recorded, store.recompute_digests(tmp))
        if differ:
            raise StoreError(f"{src}: the packed copy does not give the recorded digests of {', '.join(differ)} "
                             f"(a damaged store? `visatt-data verify {src}`)")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as an ordinary new file (mkstemp makes it private)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


# ---------------------------------------------------------------- get


def get(ref: str, location, *, lock_path=None, overwrite: bool = False, progress: bool = True) -> Path:
    """Copy the store at `location` into the cache as `ref` ('NAME[@VERSION][:SOURCE]'), checking
    every array against the lock entry of that version while it is copied. Nothing is left
    behind when the store is not that version or any digest differs; a cached copy is only ever
    replaced by one that verified."""
    parsed = parse_ref(ref)
    if parsed is None:
        raise StoreError(f"{ref}: not a dataset name (NAME[@VERSION][:SOURCE]; known: {', '.join(sorted(DATASETS))})")
    name, version, source = parsed
    lock = Lock(lock_path)
    entry = lock.entry(name, version, source)
    if entry is None:
        raise StoreError(f"{name} {version} ({source}) is not a frozen version in {lock.path}: nothing to verify a copy against")
    root = store.open_root(location)
    attrs = dict(root.attrs[store.ATTRS_KEY])
    found = (attrs.get("dataset"), attrs.get("version"), (attrs.get("recipe") or {}).get("source"))
    if found != (name, version, source):
        raise StoreError(f"{location}: holds {found[0]} {found[1] or 'unlocked'} ({found[2]}), not {name} {version} ({source})")
    if attrs.get("recipe_digest") != entry["recipe_digest"]:
        raise StoreError(f"{location}: its recipe digest differs from {name} {version} ({source}) in {lock.path}")
    target = cached_path(name, version, source)
    if target.exists() and not overwrite:
        raise StoreError(f"{target}: already in the cache (use --overwrite to replace it)")
    keys = sorted(entry["digests"])
    arrays = {}
    for key in keys:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arrays[key] = zarr.open_array(store=root.store, path=key, mode="r", zarr_format=3)
        except Exception as e:
            raise StoreError(f"{location}: {key} is missing or unreadable ({store.first_line(e)})") from None
    total = sum(a.nbytes for a in arrays.values())  # bytes of every array, uncompressed
    with store.atomic_store(target, overwrite=True) as partial:
        out = zarr.open_group(store=str(partial), mode="w", zarr_format=3)
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"get {name}", disable=not progress, leave=False) as bar:
            for key, src in arrays.items():
                dst = out.create_array(key, shape=src.shape, chunks=src.chunks, dtype=src.dtype,
                                       compressors=store.COMPRESSOR, fill_value=src.fill_value,
                                       dimension_names=src.metadata.dimension_names)
                blocks = []
                for start in range(0, src.shape[0], store.CHUNK):
                    try:
                        block = np.asarray(src[start : start + store.CHUNK])
                    except Exception as e:
                        raise StoreError(f"{location}: {key} is unreadable ({store.first_line(e)})") from None
                    dst[start : start + len(block)] = block
                    blocks.append(store.block_digest(block))
                    bar.update(block.nbytes)
                digest = store.combine_digests(src.shape, src.dtype, blocks)
                if compare({key: entry["digests"][key]}, {key: digest}):
                    raise StoreError(f"{location}: {key} differs from {name} {version} ({source}) in {lock.path}; "
                                     "nothing was copied")
        # The copy's attributes name what was checked: the lock's digests and split sizes.
        store.finalize(partial, {**attrs, "digests": {k: entry["digests"][k] for k in keys}, "splits": entry["splits"]})
    return target
