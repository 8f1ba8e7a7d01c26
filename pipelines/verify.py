"""`visatt-data verify`: recompute every digest of a store and compare with its attributes and the lock."""

from __future__ import annotations

from pathlib import Path

from pipelines import store
from pipelines.lock import Lock, compare, recipe_digest


def verify_store(path: Path, lock_path=None) -> tuple[list[str], list[str]]:
    """Return (problems, notes). The store is proven only when `problems` is empty."""
    attrs = store.store_attrs(path)
    problems, notes = [], []
    actual = store.recompute_digests(path)
    recorded = attrs.get("digests", {})
    for key in compare(recorded, actual):
        if key not in recorded:
            problems.append(f"{key}: array in the store but not in its attributes")
        elif key not in actual:
            problems.append(f"{key}: listed in the attributes but missing from the store")
        elif actual[key].startswith("error: "):
            problems.append(f"{key}: unreadable ({actual[key].removeprefix('error: ')})")
        else:
            problems.append(f"{key}: content digest {actual[key][:23]}... differs from recorded {recorded[key][:23]}...")
    if recipe_digest(attrs.get("recipe") or {}) != attrs.get("recipe_digest"):
        problems.append("recipe: the recorded recipe does not match the recorded recipe digest")
    name, version = attrs.get("dataset"), attrs.get("version")
    source = (attrs.get("recipe") or {}).get("source")
    lock = Lock(lock_path)
    entry = lock.entry(name, version, source) if version else None
    if entry is None:
        if attrs.get("frozen"):
            problems.append(f"lock: store claims frozen {name} {version} ({source}) but {lock.path} has no such entry")
        else:
            notes.append(f"{name} is an unlocked build: checked against its own attributes only")
    else:
        if entry["recipe_digest"] != attrs.get("recipe_digest"):
            problems.append(f"lock: recipe digest differs from {name} {version} ({source}) in {lock.path}")
        for key in compare(entry["digests"], actual):
            problems.append(f"{key}: differs from {name} {version} ({source}) in {lock.path}")
        if not problems:
            notes.append(f"matches {name} {version} ({source}) in {lock.path}")
    return problems, notes
