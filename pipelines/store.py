"""Zarr v3 stores: atomic creation, chunk writes, array digests and verification.

A store is written into a hidden folder beside its target and renamed into place only when the
build succeeded, so a failed or interrupted build never touches the previous store. Digests are
taken over decoded arrays (dtype, shape, bytes), never over compressed chunk files: compressor
output changes between library versions, the data does not.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import socket
import urllib.parse
import uuid
import warnings
import zipfile
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.storage import LocalStore, ZipStore

CHUNK = 1000  # samples per chunk, per build task and per digest block
COMPRESSOR = BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle")  # ~21x on cluttered MNIST; level 3: 2% smaller, 3x slower
ATTRS_KEY = "visatt"
_PARTIAL = ".partial-"
_OLD = "-old"  # suffix of the replaced store while the new one moves into place


class StoreError(Exception):
    """A store is missing, unreadable or not a visatt store (one-line message)."""


# ---------------------------------------------------------------- digests


def digest_header(shape: tuple[int, ...], dtype) -> bytes:
    return json.dumps({"dtype": np.dtype(dtype).str, "shape": list(shape)}, sort_keys=True).encode()


def block_digest(block: np.ndarray) -> bytes:
    """sha256 of one block of CHUNK samples (C-order bytes)."""
    return hashlib.sha256(np.ascontiguousarray(block).data).digest()


def combine_digests(shape, dtype, blocks: list[bytes]) -> str:
    """The array digest: sha256(header || sha256(block_0) || sha256(block_1) || ...)."""
    h = hashlib.sha256(digest_header(shape, dtype))
    for b in blocks:
        h.update(b)
    return "sha256:" + h.hexdigest()


def array_digest(array) -> str:
    """Digest of a numpy or zarr array, read CHUNK samples at a time (bounded memory)."""
    n = array.shape[0]
    blocks = [block_digest(np.asarray(array[i : i + CHUNK])) for i in range(0, n, CHUNK)]
    return combine_digests(array.shape, array.dtype, blocks)


# ---------------------------------------------------------------- atomic creation


def partial_path(target: Path) -> Path:
    """`.NAME.partial-PID@HOST-RANDOM` beside `target`: the owner is known, on a shared filesystem too."""
    return target.parent / f".{target.name}{_PARTIAL}{os.getpid()}@{_host()}-{uuid.uuid4().hex[:8]}"


def _host() -> str:
    return socket.gethostname().replace("/", "_") or "localhost"


def _owner(partial: Path) -> tuple[int | None, str | None]:
    """(pid, host) of the build that made a partial folder; host None for names without one
    (this machine's, as earlier versions wrote them)."""
    rest = partial.name.rsplit(_PARTIAL, 1)[1].removesuffix(_OLD)
    who = rest.rpartition("-")[0]  # without the random part
    pid, _, host = who.partition("@")
    return (int(pid) if pid.isdigit() else None), (host or None)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    """Remove a folder tree or a file (a replaced `--out` may have been either)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_partials(target: Path) -> list[Path]:
    """Clean up after builds of `target` that were killed (their process no longer exists).

    A build replaces a store in two renames: the old store aside (`PARTIAL-old`), then the new
    one into place. Killed between them, the target is missing and the old copy is put back
    (the new one, whose build never reported success, is discarded). Anything else such a build
    left (its partial folder, an old copy whose replacement is in place) is removed. Only this
    machine's builds are judged: on a shared filesystem another host's PID means nothing here,
    so its partial folders are left to that host.
    """
    removed = []
    stale = []
    here = _host()
    for p in target.parent.glob(f".{target.name}{_PARTIAL}*"):
        pid, host = _owner(p)
        if pid is not None and host in (None, here) and not _pid_alive(pid):
            stale.append(p)
    for p in stale:
        if p.name.endswith(_OLD) and not os.path.lexists(target):
            os.rename(p, target)  # put the previous store back
    for p in stale:
        if os.path.lexists(p):
            _remove(p)
            removed.append(p)
    return removed


def check_target(target, *, overwrite: bool) -> None:
    """Refuse an existing `target` unless `overwrite`, after recovering what a build killed while
    replacing it left (which may put its previous store back)."""
    target = Path(target)
    if target.parent.exists():
        remove_stale_partials(target)
    if os.path.lexists(target) and not overwrite:
        raise StoreError(f"{target}: already exists (use --overwrite to replace it)")


@contextlib.contextmanager
def atomic_store(target: Path, *, overwrite: bool):
    """Yield a fresh partial folder beside `target`; rename it into place when the block succeeds.

    On any exception (KeyboardInterrupt and SystemExit included) the partial folder is removed and
    `target` is left exactly as it was.
    """
    target = Path(target)
    check_target(target, overwrite=overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(target)
    partial.mkdir()
    try:
        yield partial
        if os.path.lexists(target) and not overwrite:  # made by someone else meanwhile: keep theirs
            raise StoreError(f"{target}: already exists (another build finished first; use --overwrite to replace it)")
        if os.path.lexists(target):
            old = partial.with_name(partial.name + _OLD)
            os.rename(target, old)  # killed from here ...
            os.rename(partial, target)  # ... to here, the next build puts `old` back (remove_stale_partials)
            _remove(old)
        else:
            os.rename(partial, target)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)


# ---------------------------------------------------------------- writing and reading


def create_arrays(path: Path, splits: dict[str, int], specs: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """Create the (empty) group layout: one group per split, arrays chunked along samples."""
    root = zarr.open_group(store=str(path), mode="w", zarr_format=3)
    for split, n in splits.items():
        group = root.create_group(split)
        for name, (tail, dtype) in specs.items():
            group.create_array(
                name,
                shape=(n, *tail),
                chunks=(max(1, min(CHUNK, n)), *tail),
                dtype=dtype,
                compressors=COMPRESSOR,
                fill_value=0,
                dimension_names=("sample", *(None for _ in tail)),
            )


@functools.lru_cache(maxsize=64)
def _writable(path: str, key: str) -> zarr.Array:
    """An array of a store being built, opened once per worker (its metadata is read once)."""
    return zarr.open_array(store=path, path=key, mode="r+")


def write_chunk(path: Path, split: str, start: int, arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
    """Write whole aligned chunks (no two tasks share a chunk) and return their block digests."""
    digests = {}
    for name, data in arrays.items():
        _writable(str(path), f"{split}/{name}")[start : start + len(data)] = data
        digests[name] = block_digest(data)
    return digests


def finalize(path: Path, attrs: dict) -> None:
    root = zarr.open_group(store=str(path), mode="r+", zarr_format=3)
    root.attrs[ATTRS_KEY] = attrs
    with warnings.catch_warnings():  # consolidated metadata is a zarr extension, not in the v3 spec
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(path))


def is_url(location) -> bool:
    """True for 'PROTOCOL://...' locations (http, https, s3, gs, ...), read through fsspec."""
    return "://" in str(location)


def zarr_store(location):
    """A read-only zarr store for a location: a store folder, a packed store file (a zip, see
    `visatt-data pack`), or a URL of either that fsspec reaches (http(s)://, s3://, gs://, ...).

    Nothing is downloaded up front: zarr asks for each metadata document and chunk as it needs
    it (a packed file over a URL is read with HTTP range requests)."""
    loc = str(location)
    if is_url(loc):
        protocol = loc.split("://", 1)[0]
        try:
            import fsspec
            from zarr.storage import FsspecStore

            if urllib.parse.urlparse(loc).path.rstrip("/").endswith(".zip"):  # a packed store (query strings kept)
                return ZipStore(fsspec.open(loc, mode="rb").open(), mode="r")
            return FsspecStore.from_url(loc.rstrip("/"), read_only=True)
        except ImportError as e:
            extra = {"s3": "s3", "gs": "gcs", "gcs": "gcs"}.get(protocol)
            hint = f"pip install 'visatt[{extra}]'" if extra else "install the fsspec backend for it"
            raise StoreError(f"{loc}: reading {protocol}:// locations needs a package that is missing "
                             f"({first_line(e)}); {hint}") from None
        except FileNotFoundError:
            raise StoreError(f"{loc}: no such store") from None
        except Exception as e:  # connection refused, a server that does not allow range requests, ...
            raise StoreError(f"{loc}: cannot be read ({first_line(e)})") from None
    path = Path(loc)
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise StoreError(f"{path}: not a store (a file, but not a packed store: no zip archive)")
        return ZipStore(path, mode="r")
    return LocalStore(path, read_only=True)


def open_root(location) -> zarr.Group:
    """The root group of the visatt store at `location` (any place `zarr_store` reads), read-only.
    `pipelines.reader.open_store` builds on it: the checked attributes and splits, for readers."""
    if not is_url(location):
        path = Path(location)
        if not path.exists() and path.parent.exists():
            remove_stale_partials(path)  # a build killed while replacing it: its previous copy goes back
        if not path.exists():
            raise StoreError(f"{path}: no such store")
    zstore = zarr_store(location)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            root = zarr.open_group(store=zstore, mode="r", zarr_format=3)
    except FileNotFoundError:  # zarr's GroupNotFoundError: no group metadata at the location
        raise StoreError(f"{location}: not a readable Zarr v3 store (no zarr.json group metadata there)") from None
    except Exception as e:  # zarr raises several types for a folder that is not a group
        raise StoreError(f"{location}: not a readable Zarr v3 store ({first_line(e)})") from None
    if ATTRS_KEY not in root.attrs:
        raise StoreError(f"{location}: not a visatt store (no '{ATTRS_KEY}' attributes)")
    return root


def store_attrs(location) -> dict:
    return dict(open_root(location).attrs[ATTRS_KEY])


def recompute_digests(location) -> dict[str, str]:
    """Digest of every array in the store, read chunk by chunk; unreadable arrays map to 'error: ...'."""
    root = open_root(location)
    zstore = root.store
    out = {}
    for split_name, group in sorted(root.groups()):
        for name, _ in sorted(group.arrays()):
            key = f"{split_name}/{name}"
            try:
                # The array's own metadata, not the consolidated copy in the root: a damaged
                # zarr.json must not hide behind it (readers that do not consolidate would fail).
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    array = zarr.open_array(store=zstore, path=key, mode="r", zarr_format=3)
            except Exception as e:
                out[key] = f"error: metadata {key}/zarr.json: {first_line(e)}"
                continue
            try:
                out[key] = array_digest(array)
            except Exception as e:  # a corrupt chunk may fail to decompress
                out[key] = f"error: {first_line(e)}"
    return out


def read(path, group, key: str, selection=slice(None)) -> np.ndarray:
    """`group[key][selection]` as numpy; a chunk that does not decode is a one-line StoreError."""
    try:
        return np.asarray(group[key][selection])
    except Exception as e:
        raise StoreError(f"{path}: {group.basename}/{key} is unreadable ({first_line(e)}); "
                         f"`visatt-data verify` checks the whole store") from None


def first_line(e: Exception) -> str:
    """'Type: first line of the message', for one-line errors."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
