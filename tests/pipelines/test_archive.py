"""Resumable downloads from a real HTTP server on loopback, checksums, and safe tar extraction."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from pipelines.archive import ArchiveError, Expected, download, extract_tar, file_checksums, verify_file

PAYLOAD = np.random.default_rng(0).integers(0, 256, size=300_000, dtype=np.uint8).tobytes()
GOOD = Expected(size=len(PAYLOAD), md5=hashlib.md5(PAYLOAD).hexdigest(), sha256=hashlib.sha256(PAYLOAD).hexdigest())


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `server.files`; honours `Range: bytes=N-` unless `server.ignore_range`; the first
    `server.cut_first` full-file answers stop after half the bytes (a dropped connection)."""

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        data = server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        header = self.headers.get("Range")
        if header and not server.ignore_range:
            start = int(header.removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if start == 0 and server.cut_first > 0:
            server.cut_first -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.requests, httpd.ignore_range, httpd.cut_first = {"/data.bin": PAYLOAD}, [], False, 0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _quiet(*_):
    pass


# ---------------------------------------------------------------- checksums and downloads


def test_file_checksums_and_verify(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(PAYLOAD)
    assert file_checksums(path) == {"size": GOOD.size, "md5": GOOD.md5, "sha256": GOOD.sha256}
    assert verify_file(path, GOOD)["md5"] == GOOD.md5
    with pytest.raises(ArchiveError, match=r"f\.bin: md5 is .*, expected 0+$"):
        verify_file(path, Expected(md5="0" * 32))
    with pytest.raises(ArchiveError, match="sha256 is"):
        verify_file(path, Expected(sha256="f" * 64))
    with pytest.raises(ArchiveError, match="size is 300000, expected 1"):
        verify_file(path, Expected(size=1))


def test_download_resumes_after_a_dropped_connection(server, tmp_path):
    server.cut_first = 1
    dest = tmp_path / "data.bin"
    got = download(server.url + "/data.bin", dest, GOOD, retries=2, backoff=0, log=_quiet)
    assert dest.read_bytes() == PAYLOAD and got["sha256"] == GOOD.sha256
    assert not dest.with_name("data.bin.part").exists()
    # First answer stopped halfway; the retry asked only for the rest.
    assert server.requests == [("/data.bin", None), ("/data.bin", f"bytes={len(PAYLOAD) // 2}-")]


def test_download_resumes_an_existing_part_file(server, tmp_path):
    dest = tmp_path / "data.bin"
    dest.with_name("data.bin.part").write_bytes(PAYLOAD[:123_456])
    download([server.url + "/data.bin"], dest, GOOD, log=_quiet)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/data.bin", "bytes=123456-")]


def test_download_restarts_when_the_server_ignores_range(server, tmp_path):
    server.ignore_range = True
    dest = tmp_path / "data.bin"
    dest.with_name("data.bin.part").write_bytes(b"\0" * 1000)  # would corrupt the file if appended to
    download(server.url + "/data.bin", dest, GOOD, log=_quiet)
    assert dest.read_bytes() == PAYLOAD


def test_download_tries_the_next_mirror(server, tmp_path):
    dest = tmp_path / "data.bin"
    download([server.url + "/missing/data.bin", server.url + "/data.bin"], dest, GOOD, retries=1, log=_quiet)
    assert dest.read_bytes() == PAYLOAD


def test_download_with_a_wrong_checksum_leaves_nothing(server, tmp_path):
    dest = tmp_path / "data.bin"
    with pytest.raises(ArchiveError, match="every mirror failed.*md5 is"):
        download(server.url + "/data.bin", dest, Expected(md5="0" * 32), retries=2, backoff=0, log=_quiet)
    assert list(tmp_path.iterdir()) == []


def test_download_skips_a_verified_file(server, tmp_path):
    dest = tmp_path / "data.bin"
    dest.write_bytes(PAYLOAD)
    download(server.url + "/data.bin", dest, GOOD, log=_quiet)
    assert server.requests == []


# ---------------------------------------------------------------- extraction


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_extract_strips_the_top_folder(tmp_path):
    folder = tarfile.TarInfo("train")
    folder.type = tarfile.DIRTYPE
    archive = _tar(tmp_path / "a.tar.gz", [(folder, None), _file("train/1.png", b"png"), _file("train/sub/2.png")])
    out = extract_tar(archive, tmp_path / "out", strip_components=1)
    assert _tree(out) == {"1.png", "sub", "sub/2.png"}
    assert (out / "1.png").read_bytes() == b"png"
    with pytest.raises(ArchiveError, match="already exists"):
        extract_tar(archive, tmp_path / "out")


@pytest.mark.parametrize(
    "member, reason",
    [
        (_file("train/../../evil.txt"), r"path leaves the target folder"),
        (_file("../evil.txt"), r"path leaves the target folder"),
        (_special("train/link", tarfile.SYMTYPE, "../../evil.txt"), "symbolic link"),
        (_special("train/inside-link", tarfile.SYMTYPE, "1.png"), "symbolic link"),
        (_special("train/hard", tarfile.LNKTYPE, "train/1.png"), "hard link"),
        (_special("train/dev", tarfile.CHRTYPE), "device file"),
        (_special("train/fifo", tarfile.FIFOTYPE), "fifo"),
    ],
)
def test_hostile_archives_are_refused_and_write_nothing(tmp_path, member, reason):
    work = tmp_path / "work"
    work.mkdir()
    archive = _tar(tmp_path / "hostile.tar.gz", [_file("train/1.png"), member, _file("train/2.png")])
    before = _tree(tmp_path)
    with pytest.raises(ArchiveError, match=reason) as e:
        extract_tar(archive, work / "out", strip_components=1)
    assert "\n" not in str(e.value) and "hostile.tar.gz" in str(e.value)
    assert _tree(tmp_path) == before  # no target, no partial folder, nothing outside


def test_absolute_member_is_refused(tmp_path):
    outside = tmp_path / "outside.txt"
    archive = _tar(tmp_path / "abs.tar", [_file("1.png"), _file(str(outside))], mode="w")
    with pytest.raises(ArchiveError, match="absolute path"):
        extract_tar(archive, tmp_path / "out")
    assert not outside.exists() and not (tmp_path / "out").exists()
    assert _tree(tmp_path) == {"abs.tar"}


def test_truncated_archive_is_a_clear_error(tmp_path):
    noise = np.random.default_rng(1).integers(0, 256, size=200_000, dtype=np.uint8).tobytes()
    archive = _tar(tmp_path / "t.tar.gz", [_file("train/1.png", noise), _file("train/2.png", noise)])
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ArchiveError, match=r"t\.tar\.gz: truncated or corrupt archive") as e:
        extract_tar(archive, tmp_path / "out", strip_components=1)
    assert "\n" not in str(e.value)
    assert _tree(tmp_path) == {"t.tar.gz"}


def test_missing_archive(tmp_path):
    with pytest.raises(ArchiveError, match="file not found"):
        extract_tar(tmp_path / "nope.tar.gz", tmp_path / "out")
