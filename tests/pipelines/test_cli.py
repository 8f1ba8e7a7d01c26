"""`visatt-data` through click's CliRunner, on real MNIST from ../shared/sources/mnist."""

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from pipelines.cli import main


@pytest.fixture
def run(tmp_path, monkeypatch, empty_lock):
    monkeypatch.setenv("VISATT_HOME", str(tmp_path / "home"))
    runner = CliRunner()

    def invoke(*args, code=0):
        result = runner.invoke(main, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result

    return invoke


def test_fetch_build_info_verify_preview_on_real_mnist(run, tmp_path, mnist_dir):
    run("build", "mnist-translated-60", "--out", tmp_path / "t.zarr", code=1)  # no sources yet
    fetched = run("fetch", "mnist", "--from", mnist_dir).output
    assert fetched.count("verified") == 4
    out = tmp_path / "t.zarr"
    built = run("build", "mnist-translated-60", "--out", out, "--limit", "200", "--workers", "2", "--quiet").output
    assert "limited to 200 samples" in built
    info = json.loads(run("info", out, "--json").output)
    assert info["attributes"]["dataset"] == "mnist-translated-60" and info["attributes"]["version"] is None
    assert info["splits"]["train"]["arrays"]["images"]["shape"] == [200, 60, 60, 1]
    assert sum(info["splits"]["test"]["label_histogram"]) == 200
    assert "unlocked build" in run("verify", out).output
    png = tmp_path / "p.png"
    run("preview", out, "--out", png, "--count", "10", "--columns", "5")
    with Image.open(png) as image:
        assert image.size == (5 * (2 * 60 + 4), 2 * (2 * 60 + 14 + 4))
        assert (255, 40, 40) in {c for _, c in image.getcolors(1 << 16)}  # digit boxes are drawn


def test_missing_sources_error_is_one_line_and_says_how(run, tmp_path):
    result = run("build", "mnist-cluttered", "--out", tmp_path / "x.zarr", code=1)
    assert "visatt-data fetch mnist" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "x.zarr").exists()


def test_lock_then_build_is_frozen_and_verify_uses_the_lock(run, tmp_path, empty_lock):
    assert run("lock", "mnist-cluttered-60", "--source", "sample").stdout == "locked mnist-cluttered-60 1.0.0 (sample)\n"
    assert "locked 1.0.0 (sample)" in run("list").output
    again = run("lock", "mnist-cluttered-60", "--source", "sample").stdout
    assert again == "confirmed mnist-cluttered-60 1.0.0 (sample): the rebuild matches the lock\n"
    out = tmp_path / "s.zarr"
    assert "1.0.0 (frozen)" in run("build", "mnist-cluttered-60", "--source", "sample", "--out", out, "--quiet").output
    assert "matches mnist-cluttered-60 1.0.0 (sample)" in run("verify", out).output
    lock = json.loads(empty_lock.read_text())
    lock["datasets"]["mnist-cluttered-60"]["1.0.0"]["sample"]["digests"]["test/labels"] = "sha256:00"
    empty_lock.write_text(json.dumps(lock))
    result = run("verify", out, code=1)
    assert "MISMATCH test/labels: differs from mnist-cluttered-60 1.0.0 (sample)" in result.output


def test_refuses_to_overwrite_without_flag(run, tmp_path):
    out = tmp_path / "s.zarr"
    run("build", "mnist-translated", "--source", "sample", "--limit", "5", "--out", out, "--quiet")
    result = run("build", "mnist-translated", "--source", "sample", "--limit", "5", "--out", out, code=1)
    assert "already exists (use --overwrite" in result.output


def test_verify_and_info_refuse_what_is_not_a_store(run, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "not a readable Zarr v3 store" in run("verify", tmp_path / "empty", code=1).output
    assert "not a readable Zarr v3 store" in run("info", tmp_path / "empty", code=1).output


@pytest.mark.parametrize("command", ["fetch", "build", "verify", "info", "preview", "list", "lock"])
def test_every_command_explains_itself(run, command):
    text = run(command, "--help").output
    assert "Usage:" in text and len(text.splitlines()) > 4


def test_info_preview_and_verify_name_an_undecodable_chunk_in_one_line(run, tmp_path):
    out = tmp_path / "m.zarr"
    run("build", "mnist-translated-60", "--out", out, "--source", "sample", "--limit", 10, "--quiet")
    for array in ("train/images", "train/labels"):
        chunk = sorted(f for f in (out / array / "c").rglob("*") if f.is_file())[0]
        chunk.write_bytes(b"\x02\x01" + b"\xff" * 14 + chunk.read_bytes()[16:])  # a broken blosc header
    for args, array in ((("info", out), "train/labels"), (("preview", out, "--split", "train"), "train/images")):
        text = run(*args, code=1).output
        assert text.startswith(f"Error: {out}: {array} is unreadable (") and text.count("\n") == 1
    text = run("verify", out, code=1).output
    assert "train/images: unreadable (" in text and "train/labels: unreadable (" in text


@pytest.mark.parametrize("content, reason", [("[]", "not a visatt lock file"), ('{"format": 1}', "not a visatt lock file")])
def test_a_malformed_lock_is_a_one_line_error(run, tmp_path, content, reason):
    lock = tmp_path / "bad.lock"
    lock.write_text(content)
    text = run("list", "--lock", lock, code=1).output
    assert text == f"Error: {lock}: {reason}" + text.split(reason, 1)[1] and text.count("\n") == 1


def test_an_out_that_cannot_be_written_is_a_one_line_error(run, tmp_path):
    (tmp_path / "file").write_text("in the way")
    for out, reason in ((tmp_path / "file" / "x.zarr", ": File exists"), ("/proc/x.zarr", "No such file or directory")):
        text = run("build", "mnist-translated-60", "--source", "sample", "--limit", 5, "--out", out, "--quiet", code=1).output
        assert text.startswith("Error: ") and reason in text and text.count("\n") == 1
