"""Build a named dataset into a Zarr store, in parallel with dask, checked against `datasets.lock`.

One task per chunk of `store.CHUNK` samples: it regenerates its samples from their own seeds,
writes whole aligned chunks (no two tasks touch one chunk) and returns the chunks' block digests.
The driver combines block digests in order, so array digests do not depend on the worker count,
the scheduler or the order in which tasks finish.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from importlib.metadata import PackageNotFoundError, version as _pkg_version
from pathlib import Path

import dask
import dask.multiprocessing
import dask.threaded
from dask.callbacks import Callback
from tqdm.auto import tqdm

from pipelines import store
from pipelines.datasets import get_dataset
from pipelines.lock import Lock, LockError, compare, recipe_digest


class BuildError(Exception):
    """A build that cannot proceed or disagrees with the lock (one-line message)."""


def package_version() -> str:
    try:
        return _pkg_version("visatt")
    except PackageNotFoundError:
        return "unknown"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a build will write: the resolved recipe and the size of every split."""

    name: str
    version: str
    recipe: object
    splits: dict
    named: bool  # the recipe is the named dataset's default (no custom options, no limit)
    sources: dict
    source_dir: str | None
    attrs: dict = dataclasses.field(default_factory=dict)  # family-specific store attributes


def plan_build(name: str, *, source: str | None = None, source_dir=None, limit: int | None = None, **options) -> Plan:
    spec = get_dataset(name)
    source = source or spec.family.sources[0]
    if source not in spec.family.sources:
        raise BuildError(f"{name} is built from source {' or '.join(spec.family.sources)}, not {source!r}")
    fields = {f.name for f in dataclasses.fields(spec.family.recipe_type)}
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - fields)
    if unknown:
        known = sorted(fields - {"source", "generator", "limit"})
        raise BuildError(f"{name} has no option {', '.join(unknown)} (its options: {', '.join(known)})")
    if limit is not None and "limit" in fields:
        given["limit"] = limit  # a family that reads only the first `limit` source entries (svhn) records it
    recipe = spec.family.make_recipe(source, **{**spec.defaults, **given})
    named = limit is None and recipe == spec.family.make_recipe(source, **spec.defaults)
    src = spec.family.load_source(recipe, str(source_dir) if source_dir else None)
    splits = spec.family.split_sizes(recipe, src)
    if limit is not None:
        if limit < 1:
            raise BuildError(f"--limit must be positive, got {limit}")
        if "limit" not in fields:  # a family that limits its source reads (svhn) already made small splits:
            splits = {k: min(n, limit) for k, n in splits.items()}  # capping them again would cut svhn's extra off
    attrs = spec.family.store_attrs(recipe, src) if hasattr(spec.family, "store_attrs") else {}
    return Plan(
        name, spec.version, recipe, splits, named, dict(src.checksums), str(source_dir) if source_dir else None, attrs
    )


def _run_task(name: str, recipe, source_dir, path: str, split: str, start: int, stop: int):
    """One chunk: generate samples [start, stop) of `split`, write them, return block digests."""
    family = get_dataset(name).family
    arrays = family.generate(recipe, family.load_source(recipe, source_dir), split, start, stop)
    return split, start, stop - start, store.write_chunk(Path(path), split, start, arrays)


class _Progress(Callback):
    def __init__(self, bar):
        super().__init__()
        self.bar = bar

    def _posttask(self, key, result, dsk, state, worker_id):
        if isinstance(result, tuple) and len(result) == 4:
            self.bar.update(result[2])


def _die_with_parent() -> None:
    """Worker-process initializer.

    A worker must not outlive its build (a SIGKILLed build's workers would go on writing chunks
    into the folder the next build removes): on Linux the kernel kills the worker when its parent
    dies; elsewhere a thread watches the parent. Its signals are a worker's, not the command
    line's (a forked worker inherits the parent's handlers): SIGTERM kills it, which breaks the
    pool and fails the build, and Ctrl-C (SIGINT to the whole process group) is left to the
    parent, which lets the chunks in flight finish before it removes the partial store."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    if sys.platform == "linux":
        try:
            import ctypes

            if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL) == 0 and os.getppid() == parent:  # PR_SET_PDEATHSIG
                return
        except Exception:  # no libc to call: watch instead
            pass

    def watch():
        while os.getppid() == parent:
            time.sleep(0.05)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _start_pool(workers: int | None, scheduler, fork: bool = False):
    """The local pool of a build (None for a dask.distributed scheduler).

    `fork`: fork the worker processes (Linux) instead of spawning them, if this process runs no
    other Python thread: a worker then starts in milliseconds with every module imported and
    the sources already loaded by `plan_build` (a spawned one re-imports and re-reads them,
    ~1.5 s). Only for a caller that knows its process holds no native threads that a fork
    would copy half-way through something (a machine-learning framework's, say, which
    `threading` does not see): the command line, which gets here before zarr has started a
    thread. Spawned otherwise.
    """
    if scheduler not in (None, "threads", "processes"):
        return None
    workers = workers or os.cpu_count() or 1
    if scheduler != "processes":
        return ThreadPoolExecutor(workers)
    forking = fork and sys.platform == "linux" and threading.active_count() == 1
    context = multiprocessing.get_context("fork" if forking else "spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_die_with_parent)
    pool.submit(os.getpid).result()  # a fork pool starts all its workers at the first task: now
    return pool


def _execute(tasks, *, pool, scheduler, bar) -> list:
    if pool is not None:
        # Our own pool, so that on any failure (an error, SIGTERM, Ctrl-C) the chunks being written
        # finish before the caller removes the partial store: no worker writes into a deleted folder.
        try:
            with _Progress(bar):
                # The scheduler as a function: a name makes dask import distributed (0.3 s) to look for a client.
                get = dask.multiprocessing.get if isinstance(pool, ProcessPoolExecutor) else dask.threaded.get
                return list(dask.compute(*tasks, scheduler=get, pool=pool))
        except BrokenProcessPool:
            raise BuildError("a worker process of the build died (killed, or out of memory); nothing was written") from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    from distributed import Client, as_completed

    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    try:
        futures = client.compute(tasks)
        for future in as_completed(futures):
            bar.update(future.result()[2])
        return client.gather(futures)
    finally:
        if client is not scheduler:
            client.close()


def build_dataset(
    name: str,
    out,
    *,
    source: str | None = None,
    source_dir=None,
    limit: int | None = None,
    workers: int | None = None,
    scheduler=None,
    overwrite: bool = False,
    progress: bool = True,
    update_lock: bool = False,
    lock_path=None,
    fork: bool = False,
    **options,
) -> Path:
    """Build dataset `name` into the Zarr store `out` and return its path.

    `source`: where the data comes from, default the dataset family's first (e.g. "mnist").
    `scheduler`: None or "threads" for a local pool of `workers` threads, "processes" for spawned
    worker processes (a calling script needs an `if __name__ == "__main__":` guard, as for any
    spawned pool; `fork=True` forks them instead where that is safe, see `_start_pool`: what
    the command line does), or a dask.distributed address
    (or Client), whose workers must see `out` (a shared filesystem). A build whose recipe is a locked
    version must reproduce the lock's digests exactly, or it fails naming the arrays that differ
    and leaves any previous store untouched.
    """
    out = Path(out)
    plan = plan_build(name, source=source, source_dir=source_dir, limit=limit, **options)
    source = plan.recipe.source
    digest = recipe_digest(plan.recipe)
    lock = Lock(lock_path)
    if not lock.exists:
        print(f"WARNING: no lock file at {lock.path}: this build cannot be checked against the frozen versions "
              "and is not frozen (set $VISATT_LOCK or --lock to the project's datasets.lock)", file=sys.stderr)
    locked = lock.entry(name, plan.version, source) if plan.named else None
    if locked is not None and locked["recipe_digest"] != digest:
        raise LockError(
            f"{lock.path}: {name} {plan.version} ({source}) is locked with recipe {locked['recipe_digest'][:19]}..., "
            f"the code now gives {digest[:19]}...: bump the dataset version"
        )
    spec = get_dataset(name)
    specs = spec.family.array_specs(plan.recipe)
    store.check_target(out, overwrite=overwrite)  # before a pool is started for nothing
    pool = _start_pool(workers, scheduler, fork)  # before any zarr call (see there)
    try:
        with store.atomic_store(out, overwrite=overwrite) as partial:
            store.create_arrays(partial, plan.splits, specs)
            tasks = [
                dask.delayed(_run_task, pure=True)(name, plan.recipe, plan.source_dir, str(partial), split, a, min(a + store.CHUNK, n))
                for split, n in plan.splits.items()
                for a in range(0, n, store.CHUNK)
            ]
            total = sum(plan.splits.values())
            with tqdm(total=total, unit="img", desc=f"build {name}", disable=not progress, leave=False) as bar:
                results = _execute(tasks, pool=pool, scheduler=scheduler, bar=bar)
            digests = {}
            for split, n in plan.splits.items():
                mine = sorted((r for r in results if r[0] == split), key=lambda r: r[1])
                for array, (tail, dtype) in specs.items():
                    blocks = [r[3][array] for r in mine]
                    digests[f"{split}/{array}"] = store.combine_digests((n, *tail), dtype, blocks)
            if locked is not None:
                differ = compare(locked["digests"], digests)
                if differ:
                    raise LockError(
                        f"{name} {plan.version} ({source}) does not reproduce {lock.path}: "
                        f"arrays that differ: {', '.join(differ)}"
                    )
            attrs = {
                "dataset": name,
                "version": plan.version if plan.named else None,
                "frozen": locked is not None,
                "task": spec.family.task,
                "num_classes": 10,
                "recipe": dataclasses.asdict(plan.recipe),
                "recipe_digest": digest,
                "limit": limit,
                "splits": plan.splits,
                "sources": plan.sources,
                "digests": digests,
                "package_version": package_version(),
                **plan.attrs,
            }
            store.finalize(partial, attrs)
            entry = {
                "recipe": attrs["recipe"],
                "recipe_digest": digest,
                "sources": plan.sources,
                "digests": digests,
                "splits": plan.splits,
            }
            if update_lock:
                if not plan.named:
                    raise LockError(f"only the named recipe of {name} can be locked (no custom options, no --limit)")
                lock.record(name, plan.version, source, entry)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)  # also after a failure before the pool's first task
    return out
