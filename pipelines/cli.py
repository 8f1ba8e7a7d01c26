"""`visatt-data`: fetch sources, build, verify, inspect and preview dataset stores.

Each command parses its options and calls one library function; errors are one line, exit 1.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

import click

from pipelines import catalog, sources, svhn
from pipelines.archive import ArchiveError
from pipelines.build import BuildError, build_dataset
from pipelines.datasets import DATASETS, get_dataset
from pipelines.lock import Lock, LockError, compare
from pipelines.preview import format_info, preview, store_info
from pipelines.store import StoreError, is_url
from pipelines.verify import verify_store

_ERRORS = (sources.SourceError, svhn.SvhnError, ArchiveError, StoreError, LockError, BuildError, ValueError, KeyError)


def os_error_line(e: OSError) -> str:
    """'PATH: reason' for an OSError (a full disk, a read-only file system, a file in the way)."""
    where = e.filename if e.filename is not None else ""
    return f"{where}: {e.strerror or e}" if where else str(e.strerror or e)


def _one_line_errors(fn, exit_code: int = 1):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _ERRORS as e:
            message = str(e.args[0] if isinstance(e, KeyError) and e.args else e).splitlines()[0]
        except OSError as e:  # a full disk, a read-only or special file system, a file in the way
            message = os_error_line(e)
        error = click.ClickException(message)
        error.exit_code = exit_code
        raise error

    return wrapper


def local_scheduler(scheduler, workers, name):
    """The command line's default with more than one worker: processes, forked on Linux (they
    start in milliseconds with the sources loaded, and nothing of theirs holds another's GIL:
    faster than threads for every family, measured); elsewhere, where they would be spawned
    (imports and sources again in every worker), only for datasets whose generation mostly
    holds the GIL (per-sample Python work). Threads otherwise."""
    if scheduler is None and (workers or os.cpu_count() or 1) > 1:
        if sys.platform == "linux" or get_dataset(name).family.gil_bound:
            return "processes"
    return scheduler


def _terminate_cleanly():
    """Turn SIGTERM into SystemExit so an interrupted build removes its partial store."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


lock_option = click.option(
    "--lock", "lock_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Lock file (default: $VISATT_LOCK, else datasets.lock of this checkout).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="visatt")
def main():
    """Deterministic, versioned digit datasets in Zarr v3 stores.

    \b
    Quick start (offline, on the embedded real-MNIST sample):
      visatt-data build mnist-cluttered --source sample --out sample.zarr
      visatt-data info sample.zarr
    Full MNIST:
      visatt-data fetch mnist            (or: fetch mnist --from DIR)
      visatt-data build mnist-cluttered --out mnist-cluttered.zarr
      visatt-data verify mnist-cluttered.zarr
    SVHN format 1:
      visatt-data fetch svhn [--extra]   (or: fetch svhn --from DIR)
      visatt-data build svhn --out svhn.zarr   (or: build svhn --from DIR)
    Sharing a frozen version:
      visatt-data pack mnist-cluttered.zarr    (-> mnist-cluttered-1.0.0.zarr.zip)
      visatt-data verify https://host/mnist-cluttered-1.0.0.zarr.zip
      visatt-data get mnist-cluttered@1.0.0 --from https://host/mnist-cluttered-1.0.0.zarr.zip

    Sources and fetched stores are cached under $VISATT_HOME (default ~/.cache/visatt).
    """


@main.command()
@click.argument("dataset", type=click.Choice(["mnist", "svhn"]))
@click.option("--from", "from_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Verify local copies in DIR and copy them into the cache instead of downloading "
                   "(svhn: DIR/train.tar.gz or an extracted DIR/train/, the same for test and extra).")
@click.option("--mirror", "mirrors", multiple=True, metavar="URL",
              help="Mirror base URL to try (repeatable; default: the known mirrors).")
@click.option("--extra", is_flag=True, help="svhn: also get extra.tar.gz (1.9 GB).")
@click.option("--retries", default=3, show_default=True, help="Attempts per mirror and file.")
@_one_line_errors
def fetch(dataset, from_dir, mirrors, extra, retries):
    """Download (or import with --from) the raw source files and verify their checksums.

    MNIST: sha256 of the decompressed content, so re-compressed mirrors verify too. SVHN: the
    official archives' size and md5; downloads resume where they stopped; archives are extracted
    safely (no member outside its folder, no links or devices).
    """
    if dataset == "svhn":
        splits = ("train", "test", "extra") if extra else ("train", "test")
        svhn.fetch_svhn(splits=splits, from_dir=from_dir, mirrors=tuple(mirrors) or svhn.SVHN_MIRRORS,
                        retries=retries, log=click.echo)
    elif from_dir:
        for path in sources.import_mnist(from_dir):
            click.echo(f"{path.name}: verified, cached at {path}")
    else:
        sources.fetch_mnist(mirrors=tuple(mirrors) or sources.MNIST_MIRRORS, retries=retries, log=click.echo)


@main.command()
@click.argument("name", type=click.Choice(sorted(DATASETS)), metavar="NAME")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Store to write (default: ./NAME.zarr).")
@click.option("--cache", "into_cache", is_flag=True,
              help="Write the store into the local cache instead of --out, where a name finds it (visatt-train "
                   "--store NAME); only a locked version with its frozen recipe (no recipe options, no --limit).")
@click.option("--source", type=click.Choice(["mnist", "sample", "svhn"]), default=None,
              help="'mnist' (default for MNIST datasets): the real files in the cache (visatt-data fetch mnist); "
                   "'sample': the small real-MNIST sample shipped in the package (offline); "
                   "'svhn' (the only one for svhn datasets): the format-1 folders.")
@click.option("--source-dir", "--from", "source_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Read the sources from DIR instead of the cache: the MNIST files (checksums still "
                   "verified), or SVHN's extracted split folders DIR/train, DIR/test [DIR/extra].")
@click.option("--canvas", type=click.IntRange(28), help="Canvas side in pixels.")
@click.option("--clutter-count", type=click.IntRange(0), help="Clutter crops per canvas.")
@click.option("--clutter-size", type=click.IntRange(1, 28), help="Side of each clutter crop.")
@click.option("--val-size", type=click.IntRange(0), help="Training digits carved out for 'val' (default 10%).")
@click.option("--min-length", type=click.IntRange(1, 5), help="mnist-sequences: fewest digits per number.")
@click.option("--max-length", type=click.IntRange(1, 5), help="mnist-sequences: most digits per number.")
@click.option("--min-gap", type=int, help="mnist-sequences: smallest gap between 28x28 cells (negative: overlap).")
@click.option("--max-gap", type=int, help="mnist-sequences: largest gap between 28x28 cells.")
@click.option("--jitter", type=click.IntRange(0), help="mnist-sequences: largest vertical drop of a digit.")
@click.option("--overlap/--no-overlap", default=None, help="mnist-pairs: allow the two digits to overlap.")
@click.option("--size", type=click.IntRange(1), help="svhn: output side in pixels.")
@click.option("--expand", type=click.FloatRange(0), help="svhn: grow the digit-box union by this fraction, centred.")
@click.option("--color/--grayscale", default=None, help="svhn: keep RGB (default: grayscale, ITU-R 601-2 luma).")
@click.option("--eval-crop/--no-eval-crop", default=None,
              help="svhn: crop val/test around their digit boxes too (default, as the seed article; "
                   "leaks label geometry) or resize their whole image.")
@click.option("--resample", type=click.Choice(list(svhn.RESAMPLE)), help="svhn: PIL resize filter (default bilinear).")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True),
              help="svhn: share of train carved out (seeded) for 'val' (default 0.1).")
@click.option("--extra/--no-extra", default=None, help="svhn: fold SVHN's extra split into train.")
@click.option("--seed", type=click.IntRange(0), help="Dataset seed (default 0).")
@click.option("--limit", type=click.IntRange(1),
              help="Cap each split at N samples (svhn: read only the first N entries of each source split, so "
                   "that train holds up to N of train's, less val's, and N of extra's with --extra); quick runs, never "
                   "a frozen version.")
@click.option("--workers", type=click.IntRange(1), help="Workers of the local pool (default: CPU count).")
@click.option("--scheduler", metavar="ADDRESS",
              help="'processes' (the default with more than one worker: forked on Linux; elsewhere only for "
                   "mnist-sequences, svhn and svhn-64, whose generation is per-sample Python work), 'threads' "
                   "(the default otherwise), or a dask.distributed scheduler address, whose workers must see --out. "
                   "The bytes are the same whichever runs the build.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store (only once the new one is complete).")
@click.option("--update-lock", is_flag=True, help="Record this build in the lock file if its version is new.")
@click.option("--quiet", is_flag=True, help="No progress bar (the store's summary is still printed).")
@lock_option
@_one_line_errors
def build(name, out, into_cache, source, source_dir, limit, workers, scheduler, overwrite, update_lock, quiet, lock_path,
          **options):
    """Build dataset NAME into a Zarr v3 store.

    The store is written beside --out and renamed into place when complete, so a failed or
    interrupted build leaves any previous store untouched. A build of a locked version must
    reproduce the lock's digests exactly. Options that change the recipe make an unlocked build.
    """
    _terminate_cleanly()
    if into_cache:
        out, ref = cache_target(name, source, out=out, limit=limit, update_lock=update_lock, lock_path=lock_path,
                                **options)
    out = out or Path(f"{name}.zarr")
    build_dataset(
        name, out, source=source, source_dir=source_dir, limit=limit, workers=workers, scheduler=local_scheduler(scheduler, workers, name),
        overwrite=overwrite, progress=not quiet, update_lock=update_lock, lock_path=lock_path, fork=True, **options,
    )
    info = store_info(out)
    click.echo(format_info(info))
    if into_cache:
        click.echo(f"cached: its name finds it (visatt-train --store {ref}, pipelines.load({ref!r}))")
    empty = [split for split, entry in info["splits"].items() if entry["samples"] == 0]
    if empty:  # a small --limit times --val-fraction rounds to 0
        click.echo(f"note: no {' or '.join(empty)} samples: visatt-train needs train and val (raise --limit or "
                   "--val-fraction)", err=True)


def cache_target(name: str, source: str | None, *, out, limit, update_lock: bool, lock_path, **options):
    """(where, name[:source]): where `build --cache` writes NAME's current version, its place in the
    cache, once the build is known to be the locked one (refused in one line otherwise), and the
    name that finds it there."""
    given = [flag for flag, used in (("--out", out is not None), ("--limit", limit is not None),
                                     ("--update-lock", update_lock)) if used]
    given += sorted(f"--{k.replace('_', '-')}" for k, v in options.items() if v is not None)
    if given:
        raise click.UsageError(f"--cache builds the frozen recipe of a locked version: drop {', '.join(given)}")
    dataset = get_dataset(name)
    source = source or dataset.family.sources[0]
    lock = Lock(lock_path)
    if lock.entry(name, dataset.version, source) is None:
        raise click.ClickException(f"{name} {dataset.version} ({source}) is not locked in {lock.path}: only a locked "
                                   f"version goes into the cache (build it with --out PATH)")
    return catalog.cached_path(name, dataset.version, source), name if source == dataset.family.sources[0] else f"{name}:{source}"


LOCATION_HELP = (
    "LOCATION is a store folder, a packed store file (visatt-data pack), a URL of either "
    "(http(s)://, s3://, gs:// with the matching extra installed), or NAME[@VERSION][:SOURCE] "
    "for a store in the local cache (visatt-data get). Only what is needed is read."
)


@main.command(epilog=LOCATION_HELP)
@click.argument("path", metavar="LOCATION")
@lock_option
@_one_line_errors
def verify(path, lock_path):
    """Recompute every array digest of the store at LOCATION and compare with its attributes and the lock.

    Exit 0 only when everything matches; otherwise name each difference and exit 1.
    """
    path = catalog.resolve(path)
    problems, notes = verify_store(path, lock_path)
    for note in notes:
        click.echo(note)
    if problems:
        for p in problems:
            click.echo(f"MISMATCH {p}", err=True)
        raise click.exceptions.Exit(1)
    click.echo(f"{path}: OK, every digest matches")


@main.command(epilog=LOCATION_HELP)
@click.argument("path", metavar="LOCATION")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_one_line_errors
def info(path, as_json):
    """Show a store's splits, array shapes, label histograms and recipe."""
    data = store_info(catalog.resolve(path))
    click.echo(json.dumps(data, indent=2) if as_json else format_info(data))


@main.command(name="preview", epilog=LOCATION_HELP)
@click.argument("path", metavar="LOCATION")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="PNG to write (default: NAME-preview.png beside a local store, in the current folder otherwise).")
@click.option("--split", default="test", show_default=True)
@click.option("--count", default=16, show_default=True, type=click.IntRange(1))
@click.option("--columns", default=8, show_default=True, type=click.IntRange(1))
@_one_line_errors
def preview_cmd(path, out, split, count, columns):
    """Write a PNG grid of samples with their labels and digit boxes."""
    path = catalog.resolve(path)
    if out is None:
        stem = Path(str(path).rstrip("/")).name.removesuffix(".zip").removesuffix(".zarr")
        out = Path(path).with_name(stem + "-preview.png") if not is_url(path) else Path(stem + "-preview.png")
    click.echo(preview(path, out, split=split, count=count, columns=columns))


@main.command(name="list")
@lock_option
@_one_line_errors
def list_cmd(lock_path):
    """List the known datasets, their release notes and the versions frozen in the lock file."""
    lock = Lock(lock_path)
    if not lock.exists:
        click.echo(f"(no lock file at {lock.path}: no frozen versions)")
    for name, spec in sorted(DATASETS.items()):
        click.echo(f"{name} {spec.version}: {spec.description}")
        for version, note in sorted(spec.release_notes.items()):
            click.echo(f"    {version}: {note}")
        for n, version, source in lock.versions():
            if n == name:
                cached = catalog.cached_path(n, version, source)
                where = f" [cached: {cached}]" if cached.exists() else ""
                click.echo(f"    locked {version} ({source}): {lock.entry(n, version, source)['recipe_digest'][:23]}...{where}")


@main.command()
@click.argument("name", type=click.Choice(sorted(DATASETS)), metavar="NAME")
@click.argument("first", metavar="VERSION[:SOURCE]")
@click.argument("second", metavar="VERSION[:SOURCE]")
@lock_option
@functools.partial(_one_line_errors, exit_code=2)  # trouble, as diff(1) says
def diff(name, first, second, lock_path):
    """Show what differs between two locked versions (or sources) of NAME: recipe, sources, arrays.

    Exit 0 when the two entries are identical, 1 when anything differs, 2 when they cannot be
    compared (an entry missing from the lock), as diff(1) does.

    \b
    Example: visatt-data diff mnist-cluttered 1.0.0 1.0.0:sample
    """
    lines, identical = diff_entries(Lock(lock_path), name, first, second)
    for line in lines:
        click.echo(line)
    if not identical:
        raise click.exceptions.Exit(1)


def diff_entries(lock: Lock, name: str, first: str, second: str) -> tuple[list[str], bool]:
    """(the lines that say what differs between two locked entries, whether they are identical)."""
    entries = []
    for ref in (first, second):
        version, _, source = ref.partition(":")
        source = source or get_dataset(name).family.sources[0]
        entry = lock.entry(name, version, source)
        if entry is None:
            locked = ", ".join(f"{v}:{s}" for n, v, s in lock.versions() if n == name) or "none"
            raise LockError(f"{lock.path}: no locked {name} {version} ({source}); locked: {locked}")
        entries.append((f"{version}:{source}", entry))
    (a_name, a), (b_name, b) = entries
    lines = [f"{name} {a_name} -> {b_name}"]
    for key in sorted(a["recipe"].keys() | b["recipe"].keys()):
        if a["recipe"].get(key) != b["recipe"].get(key):
            lines.append(f"  recipe {key}: {a['recipe'].get(key)!r} -> {b['recipe'].get(key)!r}")
    for key in sorted(a["sources"].keys() | b["sources"].keys()):
        if a["sources"].get(key) != b["sources"].get(key):
            lines.append(f"  source file {key}: {str(a['sources'].get(key))[:19]} -> {str(b['sources'].get(key))[:19]}")
    for split in sorted(a["splits"].keys() | b["splits"].keys()):
        if a["splits"].get(split) != b["splits"].get(split):
            lines.append(f"  split {split}: {a['splits'].get(split)} -> {b['splits'].get(split)} samples")
    same = [k for k in sorted(a["digests"]) if a["digests"][k] == b["digests"].get(k)]
    differ = compare(a["digests"], b["digests"])
    lines.append(f"  arrays: {len(differ)} differ" + (f" ({', '.join(differ)})" if differ else "")
                 + f", {len(same)} identical")
    identical = len(lines) == 2 and not differ
    if identical:
        lines.insert(1, "  identical: same recipe, sources and bytes")
    return lines, identical


@main.command(epilog=LOCATION_HELP)
@click.argument("path", metavar="LOCATION")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="File (or folder) to write (default: ./NAME-VERSION.zarr.zip).")
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_one_line_errors
def pack(path, out, overwrite, quiet):
    """Pack the store folder at LOCATION into one file to share (a zip store zarr reads directly).

    The packed file holds the same arrays, so `verify` gives the same digests; it is read in
    place, locally or from a URL (one range request per chunk), and `get` unpacks it into the
    cache. Packing the same store twice gives the same bytes.
    """
    packed = catalog.pack(catalog.resolve(path), out, overwrite=overwrite, progress=not quiet)
    click.echo(f"{packed}: {packed.stat().st_size / 2**20:.1f} MiB, every digest checked")


@main.command(epilog=LOCATION_HELP)
@click.argument("ref", metavar="NAME[@VERSION][:SOURCE]")
@click.option("--from", "location", required=True, metavar="LOCATION",
              help="Where the shared store is: a folder, a packed file, or a URL of either.")
@click.option("--overwrite", is_flag=True, help="Replace a copy already in the cache.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@lock_option
@_one_line_errors
def get(ref, location, overwrite, quiet, lock_path):
    """Copy a frozen dataset version from LOCATION into the local cache, checking every digest.

    The store must be the locked version NAME@VERSION (default: the current version; SOURCE
    default: the dataset's first source). Each array is checked against the lock while it is
    copied; on any difference nothing is left behind. The cached store is then available by
    name: `visatt-train --store NAME`, `pipelines.load("NAME")`.
    """
    _terminate_cleanly()
    target = catalog.get(ref, location, lock_path=lock_path, overwrite=overwrite, progress=not quiet)
    click.echo(f"{target}: copied, every digest matches the lock")


@main.command()
@click.argument("names", nargs=-1, required=True, type=click.Choice(sorted(DATASETS)), metavar="NAME...")
@click.option("--source", "sources_", multiple=True, type=click.Choice(["mnist", "sample", "svhn"]),
              help="Sources to lock (repeatable; default every source of the dataset).")
@click.option("--workers", type=click.IntRange(1))
@lock_option
@_one_line_errors
def lock(names, sources_, workers, lock_path):
    """Build each NAME's current version in a scratch folder and record it in the lock file.

    This is how a new dataset version is frozen. An existing entry is only ever confirmed, never
    rewritten with other data.
    """
    _terminate_cleanly()
    for name in names:
        version = get_dataset(name).version
        for source in sources_ or get_dataset(name).family.sources:
            known = Lock(lock_path).entry(name, version, source) is not None
            with tempfile.TemporaryDirectory(prefix="visatt-lock-") as tmp:
                build_dataset(name, Path(tmp) / "store.zarr", source=source, workers=workers,
                              scheduler=local_scheduler(None, workers, name), update_lock=True, lock_path=lock_path,
                              fork=True)
            click.echo(f"{'confirmed' if known else 'locked'} {name} {version} ({source})"
                       + (": the rebuild matches the lock" if known else ""))


if __name__ == "__main__":
    sys.exit(main())
