"""Builds: determinism across schedulers, the lock, verify, atomic replacement and kills."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask
import numpy as np
import pytest
import zarr
from tqdm import tqdm

from pipelines import store
from pipelines.build import _execute, _start_pool, build_dataset
from pipelines.lock import Lock, LockError
from pipelines.verify import verify_store

REPO = Path(__file__).resolve().parents[2]


def digests(path):
    return store.store_attrs(path)["digests"]


def test_same_bytes_for_one_two_workers_and_a_distributed_cluster(tmp_path, empty_lock):
    from distributed import Client, LocalCluster

    one = build_dataset("mnist-cluttered-60", tmp_path / "w1.zarr", source="sample", workers=1, progress=False)
    two = build_dataset("mnist-cluttered-60", tmp_path / "w2.zarr", source="sample", workers=2, scheduler="processes",
                        progress=False)
    threads = build_dataset("mnist-cluttered-60", tmp_path / "t2.zarr", source="sample", workers=2, scheduler="threads",
                            progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        dist = build_dataset("mnist-cluttered-60", tmp_path / "d.zarr", source="sample", scheduler=client, progress=False)
    assert digests(one) == digests(two) == digests(threads) == digests(dist)
    assert store.recompute_digests(dist) == digests(one)  # what the workers wrote is what was digested


def test_the_command_line_forks_its_workers_and_they_reproduce_the_lock(tmp_path, home):
    """A command-line build forks its pool before zarr starts a thread (a process with threads
    of its own gets spawned workers): the frozen sample version still reproduces the lock."""
    code = ("import threading; from pipelines.build import _start_pool\n"
            "def method(fork):\n"
            "    pool = _start_pool(2, 'processes', fork); pool.shutdown(); return pool._mp_context.get_start_method()\n"
            "print(method(True), method(False)); e = threading.Event(); threading.Thread(target=e.wait).start()\n"
            "print(method(True)); e.set()")
    methods = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert methods.stdout.split() == (["fork", "spawn", "spawn"] if sys.platform == "linux" else ["spawn"] * 3)
    out = tmp_path / "f.zarr"
    cmd = [sys.executable, "-m", "pipelines.cli", "build", "mnist-cluttered-60", "--source", "sample", "--workers", "2",
           "--out", str(out), "--quiet", "--lock", str(REPO / "datasets.lock")]
    subprocess.run(cmd, check=True, capture_output=True)
    attrs = store.store_attrs(out)
    assert attrs["frozen"] and verify_store(out, REPO / "datasets.lock")[0] == []


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Linux /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            pass  # gone meanwhile
    return children


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to find the build's worker processes")
def test_a_killed_worker_fails_the_build_with_one_line_and_keeps_the_old_store(tmp_path, home, empty_lock):
    """A forked worker must not inherit the command line's SIGTERM handler (which would turn the
    kill into a SystemExit that dask hands back as a clean exit 0)."""
    out = build_dataset("mnist-translated-60", tmp_path / "k.zarr", source="sample", progress=False)
    before = digests(out)
    cmd = [sys.executable, "-m", "pipelines.cli", "build", "mnist-sequences", "--out", str(out),
           "--overwrite", "--workers", "2", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_signals_as_from_a_terminal)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".k.zarr.partial-*/*/images/c")) and time.time() < deadline:
        time.sleep(0.02)
    workers = _children(proc.pid)
    assert workers, "no worker processes"
    os.kill(workers[0], signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert err.strip().splitlines() == ["Error: a worker process of the build died (killed, or out of memory); nothing was written"]
    assert digests(out) == before and not list(tmp_path.glob(".k.zarr.partial-*"))


def test_full_mnist_cluttered_reproduces_the_committed_lock(tmp_path, home):
    """The headline claim: the full seed-article dataset is byte-identical to datasets.lock."""
    out = build_dataset("mnist-cluttered", tmp_path / "mc.zarr", workers=2, progress=False,
                        lock_path=REPO / "datasets.lock")
    attrs = store.store_attrs(out)
    assert attrs["frozen"] and attrs["version"] == "1.0.0"
    assert attrs["splits"] == {"train": 54000, "val": 6000, "test": 10000}
    images = zarr.open_array(store=str(out), path="train/images", mode="r")
    assert images.shape == (54000, 100, 100, 1) and images.dtype == np.uint8 and images.chunks[0] == 1000
    problems, notes = verify_store(out, REPO / "datasets.lock")
    assert problems == [] and "matches mnist-cluttered 1.0.0 (mnist)" in notes[0]


def test_the_command_line_uses_processes_for_more_than_one_worker():
    """Forked processes (Linux) beat threads for every family; where they must be spawned, only
    per-sample Python work (sequences, SVHN) is worth their start-up."""
    from pipelines import cli

    for name in ("mnist-cluttered", "mnist-pairs", "mnist-sequences", "svhn-64"):
        assert cli.local_scheduler(None, 2, name) == "processes"
        assert cli.local_scheduler(None, 1, name) is None  # threads
        assert cli.local_scheduler("threads", 2, name) == "threads"


def test_where_processes_are_spawned_only_gil_bound_generation_gets_them(monkeypatch):
    from pipelines import cli

    monkeypatch.setattr(cli.sys, "platform", "darwin")
    assert cli.local_scheduler(None, 2, "mnist-cluttered") is None
    assert cli.local_scheduler(None, 2, "mnist-pairs") is None
    assert cli.local_scheduler(None, 2, "mnist-sequences") == "processes"
    assert cli.local_scheduler(None, 2, "svhn-64") == "processes"


def test_lock_mismatch_names_the_arrays_and_keeps_the_old_store(tmp_path, empty_lock):
    out = build_dataset("mnist-translated-60", tmp_path / "t.zarr", source="sample", update_lock=True, progress=False)
    before = digests(out)
    data = json.loads(empty_lock.read_text())
    entry = data["datasets"]["mnist-translated-60"]["1.0.0"]["sample"]
    entry["digests"]["val/images"] = "sha256:" + "0" * 64
    empty_lock.write_text(json.dumps(data))
    with pytest.raises(LockError, match="arrays that differ: val/images$"):
        build_dataset("mnist-translated-60", out, source="sample", overwrite=True, progress=False)
    assert digests(out) == before and not list(tmp_path.glob(".t.zarr.partial-*"))


def test_lock_never_rewrites_a_frozen_version(tmp_path, empty_lock):
    lock = Lock(empty_lock)
    entry = {"recipe_digest": "sha256:a", "digests": {"x": "1"}}
    assert lock.record("d", "1.0.0", "sample", entry)
    assert not lock.record("d", "1.0.0", "sample", dict(entry))  # same content: confirmed
    with pytest.raises(LockError, match="bump the dataset version"):
        lock.record("d", "1.0.0", "sample", {"recipe_digest": "sha256:a", "digests": {"x": "2"}})


def test_custom_options_and_limit_are_unlocked_builds(tmp_path, empty_lock):
    out = build_dataset("mnist-cluttered", tmp_path / "c.zarr", source="sample", limit=30, canvas=40, progress=False)
    attrs = store.store_attrs(out)
    assert attrs["version"] is None and not attrs["frozen"] and attrs["limit"] == 30
    assert attrs["splits"] == {"train": 30, "val": 30, "test": 30}
    with pytest.raises(LockError, match="only the named recipe"):
        build_dataset("mnist-cluttered", tmp_path / "d.zarr", source="sample", limit=30, update_lock=True, progress=False)
    assert not (tmp_path / "d.zarr").exists()


def test_limit_is_a_prefix_of_the_full_build(tmp_path, empty_lock):
    full = build_dataset("mnist-cluttered", tmp_path / "f.zarr", source="sample", progress=False)
    part = build_dataset("mnist-cluttered", tmp_path / "p.zarr", source="sample", limit=1500, progress=False)
    for name in ("images", "labels", "boxes"):
        a = zarr.open_array(store=str(full), path=f"train/{name}", mode="r")[:1500]
        b = zarr.open_array(store=str(part), path=f"train/{name}", mode="r")[:]
        np.testing.assert_array_equal(a, b)


def test_verify_catches_a_flipped_byte_in_a_chunk(tmp_path, empty_lock):
    out = build_dataset("mnist-cluttered-60", tmp_path / "v.zarr", source="sample", progress=False)
    assert verify_store(out)[0] == []
    chunk = sorted((out / "train" / "images" / "c").rglob("*"))
    chunk = [c for c in chunk if c.is_file()][1]
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    chunk.write_bytes(bytes(raw))
    problems, _ = verify_store(out)
    assert len(problems) == 1 and problems[0].startswith("train/images:")


def test_existing_store_needs_overwrite(tmp_path, empty_lock):
    out = build_dataset("mnist-translated-60", tmp_path / "o.zarr", source="sample", limit=10, progress=False)
    with pytest.raises(store.StoreError, match="already exists"):
        build_dataset("mnist-translated-60", out, source="sample", limit=10, progress=False)
    build_dataset("mnist-translated-60", out, source="sample", limit=20, overwrite=True, progress=False)
    assert store.store_attrs(out)["limit"] == 20


def test_bad_sources_leave_no_store(tmp_path, monkeypatch, mnist_dir, empty_lock):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in mnist_dir.glob("*.gz"):
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    from pipelines.sources import SourceError

    with pytest.raises(SourceError, match="t10k-labels-idx1-ubyte.gz: cannot decompress"):
        build_dataset("mnist-translated", tmp_path / "x.zarr", source_dir=bad, progress=False)
    assert sorted(tmp_path.iterdir()) == [bad, empty_lock]


def _signals_as_from_a_terminal():
    """SIGINT and SIGTERM at their defaults, unblocked, as for a command typed in a terminal. A
    test run started in the background by a non-interactive shell (`.ci/run &`) ignores SIGINT,
    and its children inherit that: Python then never raises KeyboardInterrupt."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_a_killed_build_leaves_the_previous_store_intact(tmp_path, home, empty_lock, sig):
    out = build_dataset("mnist-translated-60", tmp_path / "k.zarr", source="sample", progress=False)
    before = digests(out)
    # mnist-sequences on 2 processes (the command line's choice): seconds of chunks
    # after the first one appears, so the signal lands mid-build.
    cmd = [sys.executable, "-m", "pipelines.cli", "build", "mnist-sequences", "--out", str(out),
           "--overwrite", "--workers", "2", "--quiet"]
    proc = subprocess.Popen(cmd, env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=_signals_as_from_a_terminal)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".k.zarr.partial-*/*/images/c")) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # let it write a few chunks
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0, "the build finished before the signal landed"
    assert digests(out) == before and verify_store(out)[0] == []
    if sig != signal.SIGKILL:  # cleaned up on the way out, after the worker threads have stopped
        assert not list(tmp_path.glob(".k.zarr.partial-*"))
    # the next build of this target removes a killed build's debris
    build_dataset("mnist-translated-60", out, source="sample", overwrite=True, limit=5, progress=False)
    assert not list(tmp_path.glob(".k.zarr.partial-*"))


def test_verify_catches_a_recipe_that_does_not_match_its_digest(tmp_path, empty_lock):
    out = build_dataset("mnist-translated-60", tmp_path / "r.zarr", source="sample", limit=10, progress=False)
    attrs = store.store_attrs(out)
    attrs["recipe"]["seed"] = 1
    store.finalize(out, attrs)
    problems, _ = verify_store(out)
    assert problems == ["recipe: the recorded recipe does not match the recorded recipe digest"]


def test_a_failed_build_returns_only_after_its_worker_threads_stop():
    """The caller removes the partial store on failure: no chunk may still be in flight then."""
    finished = threading.Event()

    def slow_chunk():
        time.sleep(0.5)
        finished.set()
        return ("train", 0, 0, {})

    def broken_chunk():
        time.sleep(0.05)
        raise OSError("disk full")

    tasks = [dask.delayed(slow_chunk, pure=False)(), dask.delayed(broken_chunk, pure=False)()]
    with pytest.raises(OSError, match="disk full"):
        _execute(tasks, pool=_start_pool(2, "threads"), scheduler="threads", bar=tqdm(disable=True))
    assert finished.is_set()


def _slow_chunk_file(marker: str):
    time.sleep(0.5)
    Path(marker).write_text("done")
    return ("train", 0, 0, {})


def _broken_chunk():
    time.sleep(0.05)
    raise OSError("disk full")


def test_a_failed_build_returns_only_after_its_worker_processes_stop(tmp_path):
    """The same with the command line's pool of several workers (processes)."""
    marker = tmp_path / "finished"
    tasks = [dask.delayed(_slow_chunk_file, pure=False)(str(marker)), dask.delayed(_broken_chunk, pure=False)()]
    with pytest.raises(OSError, match="disk full"):
        _execute(tasks, pool=_start_pool(2, "processes"), scheduler="processes", bar=tqdm(disable=True))
    assert marker.read_text() == "done"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("step", ["before the first rename", "between the renames", "after the renames",
                                  "while removing the old copy"])
def test_a_replace_killed_at_any_step_keeps_a_good_store(tmp_path, empty_lock, step):
    """The on-disk state a build killed at each step of the replace leaves (old store aside as
    PARTIAL-old, new store as PARTIAL, target), then the next open and the next build."""
    target = tmp_path / "t.zarr"
    old = build_dataset("mnist-translated-60", tmp_path / "old.zarr", source="sample", limit=10, progress=False)
    new = build_dataset("mnist-translated-60", tmp_path / "new.zarr", source="sample", limit=20, progress=False)
    partial = tmp_path / f".t.zarr.partial-{_dead_pid()}-0123abcd"
    aside = partial.with_name(partial.name + "-old")
    if step == "before the first rename":
        old.rename(target), new.rename(partial)
        expected = 10
    elif step == "between the renames":
        old.rename(aside), new.rename(partial)
        expected = 10  # the previous store goes back; the unconfirmed new one is dropped
    else:
        old.rename(aside), new.rename(target)
        if step == "while removing the old copy":
            shutil.rmtree(aside / "train")
        expected = 20
    assert store.store_attrs(target)["limit"] == expected  # opening it recovers it
    assert verify_store(target)[0] == []
    with pytest.raises(store.StoreError, match="already exists"):  # and a build still asks for --overwrite
        build_dataset("mnist-translated-60", target, source="sample", limit=5, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "datasets.lock") == ["t.zarr"]


def test_stale_partials_are_judged_only_on_the_host_that_made_them(tmp_path):
    """On a shared filesystem a partial folder of another host's build must survive: its PID
    says nothing about processes here. This host's dead builds (new and old names) are removed."""
    target, dead = tmp_path / "t.zarr", _dead_pid()
    elsewhere = tmp_path / f".t.zarr.partial-{dead}@another-host.example-0123abcd"
    here = store.partial_path(target)
    here = here.with_name(here.name.replace(f"{os.getpid()}@", f"{dead}@"))
    older = tmp_path / f".t.zarr.partial-{dead}-4567cdef"  # the name earlier versions wrote
    alive = store.partial_path(target)  # this process: running
    for folder in (elsewhere, here, older, alive):
        folder.mkdir()
    removed = store.remove_stale_partials(target)
    assert sorted(removed) == sorted([here, older])
    assert elsewhere.exists() and alive.exists()


def test_overwriting_a_file_leaves_no_hidden_copy(tmp_path, empty_lock):
    target = tmp_path / "t.zarr"
    target.write_text("not a store")
    build_dataset("mnist-translated-60", target, source="sample", limit=5, overwrite=True, progress=False)
    assert verify_store(target)[0] == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "datasets.lock") == ["t.zarr"]


def test_verify_reads_each_array_s_own_metadata_not_only_the_consolidated_copy(tmp_path, empty_lock):
    out = build_dataset("mnist-translated-60", tmp_path / "m.zarr", source="sample", limit=10, progress=False)
    meta = out / "train" / "images" / "zarr.json"
    meta.write_bytes(meta.read_bytes()[: len(meta.read_bytes()) // 2])  # truncated
    problems, _ = verify_store(out)
    assert len(problems) == 1 and problems[0].startswith("train/images: unreadable (metadata train/images/zarr.json: ")


def test_verify_names_an_undecodable_chunk_in_whole_words(tmp_path, empty_lock):
    out = build_dataset("mnist-translated-60", tmp_path / "m.zarr", source="sample", limit=10, progress=False)
    chunk = sorted(f for f in (out / "train" / "images" / "c").rglob("*") if f.is_file())[0]
    chunk.write_bytes(b"\x02\x01" + b"\xff" * 14 + chunk.read_bytes()[16:])  # a broken blosc header
    problems, _ = verify_store(out)
    assert len(problems) == 1 and problems[0].startswith("train/images: ")
    assert "..." not in problems[0] or "differs" in problems[0]
