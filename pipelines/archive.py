"""Downloading and unpacking source archives: resumable HTTP, md5/sha256 checks, safe tar extraction.

Downloads go to `<dest>.part` and resume from its size with an HTTP `Range` request, so an
interrupted 2 GB download (SVHN's `extra.tar.gz`) does not start over; the file is renamed to
`<dest>` only once its size and checksums match.

Extraction refuses the whole archive when any member is an absolute path, climbs out with `..`,
or is anything but a regular file or a folder (symlinks, hard links, devices, fifos), then applies
tarfile's `data` filter (PEP 706) on top. Members are unpacked into a hidden folder beside the
target that is renamed into place only on success, so a refused or truncated archive leaves
nothing behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import http.client
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import uuid
import zlib
from pathlib import Path, PurePosixPath

BLOCK = 1 << 20  # bytes read per network or disk read


class ArchiveError(Exception):
    """A download, checksum or archive that cannot be used (one-line message)."""


@dataclasses.dataclass(frozen=True)
class Expected:
    """What a downloaded file must match; None means not checked (an unknown checksum)."""

    size: int | None = None
    md5: str | None = None
    sha256: str | None = None


# ---------------------------------------------------------------- checksums


def file_checksums(path: Path) -> dict:
    """Size, md5 and sha256 of a file, in one pass."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            md5.update(block)
            sha.update(block)
            size += len(block)
    return {"size": size, "md5": md5.hexdigest(), "sha256": sha.hexdigest()}


def verify_file(path: Path, expected: Expected) -> dict:
    """Check a file against `expected`; return its size, md5 and sha256 or raise ArchiveError."""
    path = Path(path)
    if not path.is_file():
        raise ArchiveError(f"{path}: file not found")
    got = file_checksums(path)
    for key in ("size", "md5", "sha256"):
        want = getattr(expected, key)
        if want is not None and got[key] != want:
            raise ArchiveError(f"{path}: {key} is {got[key]}, expected {want}")
    return got


# ---------------------------------------------------------------- downloading


def _fetch_into(url: str, part: Path, *, timeout: float) -> None:
    """Append the rest of `url` to `part`, asking for the bytes after what `part` already holds.

    A server that ignores `Range` answers 200 with the whole file: `part` is then rewritten from
    the start. 416 (nothing left to send) means `part` already holds at least the whole file.
    """
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            return
        raise
    with response:
        if have and response.status == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {have}-"):
                raise ArchiveError(f"{url}: asked for bytes {have}-, server sent {content_range!r}")
            mode = "ab"
        else:
            mode = "wb"
        with open(part, mode) as out:
            while block := response.read(BLOCK):
                out.write(block)


@contextlib.contextmanager
def new_folders(path: Path):
    """Create `path` and its missing parents; if the block fails, remove those of them that are
    still empty (a failed fetch leaves no empty cache folders behind)."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        for p in missing:  # deepest first
            with contextlib.suppress(OSError):
                p.rmdir()
        raise


def mirrors_failed(name: str, errors: dict[str, str], hint: str) -> str:
    """One line: every mirror tried with its (last) error, then what to do instead."""
    tried = "; ".join(f"{url}: {' '.join(str(error).split())}" for url, error in errors.items())
    return f"{name}: every mirror failed ({tried}). {hint}"


def download(
    urls,
    dest: Path,
    expected: Expected = Expected(),
    *,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 1.0,
    log=print,
    hint: str = "",
) -> dict:
    """Download `dest` from the first of `urls` (mirrors) that works, resuming a `.part` file.

    Each mirror gets `retries` attempts with exponential backoff; each attempt resumes where the
    last stopped. A `.part` that turns out to be wrong (size or checksum) is deleted so the next
    attempt starts clean. A `dest` that already matches `expected` is not downloaded again.
    Returns the file's size, md5 and sha256.
    """
    dest = Path(dest)
    urls = [urls] if isinstance(urls, str) else list(urls)
    if dest.exists():
        try:
            got = verify_file(dest, expected)
            log(f"{dest.name}: already present, verified")
            return got
        except ArchiveError as e:
            log(f"{dest.name}: present but does not verify ({e}); downloading again")
            dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    errors = {}
    for url in urls:
        for attempt in range(retries):
            try:
                if part.exists():
                    log(f"{dest.name}: resuming from byte {part.stat().st_size} ({url})")
                _fetch_into(url, part, timeout=timeout)
                if expected.size is not None and part.stat().st_size < expected.size:
                    raise ArchiveError(
                        f"{url}: connection ended after {part.stat().st_size} of {expected.size} bytes"
                    )
                try:
                    got = verify_file(part, expected)
                except ArchiveError:
                    part.unlink()  # wrong bytes cannot be resumed
                    raise
                os.replace(part, dest)
                log(f"{dest.name}: downloaded from {url}, verified (md5 {got['md5']})")
                return got
            except (ArchiveError, urllib.error.URLError, http.client.HTTPException, OSError) as e:
                errors[url] = str(e).removeprefix(f"{url}: ")
                if attempt + 1 < retries:
                    time.sleep(backoff * 2**attempt)
    raise ArchiveError(mirrors_failed(dest.name, errors, hint))


# ---------------------------------------------------------------- extraction


def _strip(name: str, components: int) -> str | None:
    parts = PurePosixPath(name).parts
    return None if len(parts) <= components else str(PurePosixPath(*parts[components:]))


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"hard link to {member.linkname!r}"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "fifo"
    return f"member of type {member.type!r}"


def check_member(member: tarfile.TarInfo) -> None:
    """Raise ArchiveError unless `member` is a regular file or folder with a relative, inward path."""
    name = member.name
    if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"refusing member {name!r}: absolute path")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise ArchiveError(f"refusing member {name!r}: path leaves the target folder ('..')")
    if not (member.isfile() or member.isdir()):
        raise ArchiveError(f"refusing member {name!r}: {_kind(member)}")


def extract_tar(archive: Path, target: Path, *, strip_components: int = 0, overwrite: bool = False) -> Path:
    """Extract a (compressed) tar archive so that its contents become the folder `target`.

    `strip_components` drops leading path components like GNU tar's `--strip-components`
    (`train/1.png` -> `1.png` with 1); members left with no name (the top folder) are skipped.
    Refuses hostile archives (see the module docstring) and raises ArchiveError for a truncated or
    corrupt one; in every failure `target` is untouched and no partial folder remains.
    """
    archive, target = Path(archive), Path(target)
    if target.exists() and not overwrite:
        raise ArchiveError(f"{target}: already exists (remove it or pass overwrite)")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    partial.mkdir()

    def member_filter(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        check_member(member)
        name = _strip(member.name, strip_components)
        if name is None:
            return None
        return tarfile.data_filter(member.replace(name=name, deep=False), path)

    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(partial, filter=member_filter)
        if target.exists():
            shutil.rmtree(target)
        os.rename(partial, target)
    except ArchiveError as e:
        raise ArchiveError(f"{archive}: {e}") from None
    except FileNotFoundError:
        raise ArchiveError(f"{archive}: file not found") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ArchiveError(f"{archive}: truncated or corrupt archive ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise ArchiveError(f"{archive}: cannot extract ({type(e).__name__}: {e})") from None
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return target
