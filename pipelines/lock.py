"""`datasets.lock`: the frozen dataset versions, as human-readable JSON committed with the code.

    {"format": 1,
     "datasets": {NAME: {VERSION: {SOURCE: {"recipe": {...}, "recipe_digest": "sha256:...",
                                            "sources": {file: sha256}, "digests": {"split/array": "sha256:..."},
                                            "splits": {split: n}}}}}}

SOURCE is where the digits came from ("mnist": the real files; "sample": the embedded sample).
Recording a version is deliberate (`visatt-data lock` or `build --update-lock`); an existing
version is never rewritten with other data: change the version instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

FORMAT = 1


class LockError(Exception):
    """The lock file is unreadable, or a build disagrees with it (one-line message)."""


def recipe_json(recipe) -> str:
    """Canonical JSON of a recipe (a dataclass, or its dict as stored in attributes)."""
    data = recipe if isinstance(recipe, dict) else dataclasses.asdict(recipe)
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def recipe_digest(recipe) -> str:
    return "sha256:" + hashlib.sha256(recipe_json(recipe).encode()).hexdigest()


PACKAGED = Path(__file__).resolve().parent / "datasets.lock"  # ships in the wheel; the checkout's root links to it


def default_lock_path() -> Path:
    """`$VISATT_LOCK`, else the `datasets.lock` inside the package (found from a wheel install too)."""
    env = os.environ.get("VISATT_LOCK")
    return Path(env) if env else PACKAGED


class Lock:
    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else default_lock_path()
        self.data = {"format": FORMAT, "datasets": {}}
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise LockError(f"{self.path}: unreadable lock file ({e})") from None
            if not isinstance(self.data, dict):
                raise LockError(f"{self.path}: not a visatt lock file (a JSON {type(self.data).__name__}, not an object)")
            if self.data.get("format") != FORMAT:
                raise LockError(f"{self.path}: lock format {self.data.get('format')!r}, expected {FORMAT}")
            if not isinstance(self.data.get("datasets"), dict):
                raise LockError(f"{self.path}: not a visatt lock file (no 'datasets' object)")

    def entry(self, name: str, version: str, source: str) -> dict | None:
        return self.data["datasets"].get(name, {}).get(version, {}).get(source)

    def versions(self) -> list[tuple[str, str, str]]:
        """(name, version, source) of every locked entry."""
        return [
            (name, version, source)
            for name, versions in sorted(self.data["datasets"].items())
            for version, sources in sorted(versions.items())
            for source in sorted(sources)
        ]

    def find(self, name: str, digest: str) -> tuple[str, str, dict] | None:
        """(version, source, entry) of the locked entry of `name` with this recipe digest."""
        for n, version, source in self.versions():
            entry = self.entry(n, version, source)
            if n == name and entry["recipe_digest"] == digest:
                return version, source, entry
        return None

    def record(self, name: str, version: str, source: str, entry: dict) -> bool:
        """Add an entry; True if it was new. Refuses to rewrite a version with other content."""
        old = self.entry(name, version, source)
        if old is not None:
            if old["recipe_digest"] != entry["recipe_digest"] or old["digests"] != entry["digests"]:
                raise LockError(
                    f"{self.path}: {name} {version} ({source}) is already locked with other content; "
                    "bump the dataset version instead of rewriting a frozen one"
                )
            return False
        self.data["datasets"].setdefault(name, {}).setdefault(version, {})[source] = entry
        self.save()
        return True

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def save(self) -> None:
        text = json.dumps(self.data, indent=2, sort_keys=True) + "\n"
        target = self.path.resolve()  # the checkout's datasets.lock is a link into the package: keep it one
        with tempfile.NamedTemporaryFile("w", dir=target.parent, prefix=".datasets.lock.", delete=False) as f:
            f.write(text)
        os.replace(f.name, target)


def compare(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Names of arrays whose digests differ, or that are missing on either side."""
    return sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
