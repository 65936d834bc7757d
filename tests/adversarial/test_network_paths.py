"""Network and path edge cases that must end cleanly, each in one line:

* ``zsl-data download`` against an HTTP server on 127.0.0.1 that this test starts and that
  stalls after a few bytes: one ``error:`` line after ``--read-timeout`` seconds, the partial
  ``.part`` kept with the bytes received, and a later run resumes; a server that sends slowly
  but steadily is not cut off (the timeout is per read, not for the whole download);
* W&B online gives up within ``logger.init_timeout`` (at most 30 s by default) and falls back
  to W&B offline with one warning line;
* W&B's artifact staging copies stay in the run directory, not under the home directory;
* a feature file's image paths must stay under ``--image-root`` (no ``..`` way out).
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from zsl.cli import data as data_cli
from zsl.data.download import download
from zsl.data.errors import DataError
from zsl.reporting import loggers, tracking
from zsl.reporting.settings import LoggerSpec

# ----------------------------------------------------------------------------- download

BODY = bytes(range(256)) * 40  # 10,240 bytes
SENT_BEFORE_STALL = 10


class SlowServer:
    """Serves ``BODY`` at ``/file.zip`` with byte ranges. ``stall``: the next plain GET sends
    the headers and ``SENT_BEFORE_STALL`` bytes, then nothing until :meth:`close`.
    ``trickle``: the next plain GET sends ``BODY[:trickle]`` one byte every ``gap`` s."""

    def __init__(self) -> None:
        self.stall, self.trickle, self.gap = False, 0, 0.0
        self.ranges: list[str | None] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                wanted = self.headers.get("Range")
                server.ranges.append(wanted)
                start = int(wanted.split("=")[1].rstrip("-")) if wanted else 0
                payload = BODY[start:] if not server.trickle or wanted else BODY[: server.trickle]
                self.send_response(206 if wanted else 200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if server.stall and not wanted:
                    server.stall = False
                    self.wfile.write(payload[:SENT_BEFORE_STALL])
                    self.wfile.flush()
                    server.release.wait(30)
                    self.close_connection = True
                    return
                if server.trickle and not wanted:
                    server.trickle = 0
                    for k in range(len(payload)):
                        self.wfile.write(payload[k : k + 1])
                        self.wfile.flush()
                        time.sleep(server.gap)
                    return
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/file.zip"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def slow_server() -> Iterator[SlowServer]:
    srv = SlowServer()
    yield srv
    srv.close()


def test_a_stalled_download_ends_in_one_line_and_keeps_the_part(
    slow_server: SlowServer, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    slow_server.stall = True
    argv = ["download", "xlsa17", "--root", str(root), "--datasets", "TINY", "--no-progress"]
    began = time.monotonic()
    with pytest.raises(SystemExit) as err:
        data_cli.main([*argv, "--url", slow_server.url, "--read-timeout", "1"])
    assert time.monotonic() - began < 6
    assert err.value.code == (
        f"error: {slow_server.url}: download stalled: no data for 1 s (--read-timeout) at "
        f"{SENT_BEFORE_STALL} of {len(BODY)} bytes; rerun to resume"
    )
    part = root / "xlsa17.zip.part"
    assert part.read_bytes() == BODY[:SENT_BEFORE_STALL]  # what arrived is kept
    assert not (root / "xlsa17.zip").exists()

    # a later run resumes from the part file: only the rest is asked for
    download(slow_server.url, root / "xlsa17.zip", progress=False, read_timeout=1)
    assert slow_server.ranges == [None, f"bytes={SENT_BEFORE_STALL}-"]
    assert (root / "xlsa17.zip").read_bytes() == BODY
    assert not part.exists()


def test_a_slow_but_steady_download_is_not_cut_off(slow_server: SlowServer, tmp_path: Path) -> None:
    """The read timeout is per read: 12 bytes, one every 0.15 s, take longer than the 1 s
    timeout in all and still finish."""
    slow_server.trickle, slow_server.gap = 12, 0.15
    began = time.monotonic()
    dest = download(slow_server.url, tmp_path / "f.zip", progress=False, read_timeout=1)
    assert time.monotonic() - began > 1.0
    assert dest.read_bytes() == BODY[:12]


def test_a_server_that_never_answers_is_one_line(tmp_path: Path) -> None:
    """Accepts the connection, never sends the headers: one line after the read timeout."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/file.zip"
        began = time.monotonic()
        with pytest.raises(DataError) as err:
            download(url, tmp_path / "f.zip", progress=False, read_timeout=0.5)
        assert time.monotonic() - began < 5
    assert str(err.value) == (
        f"{url}: download failed: no response within 0.5 s (--read-timeout); rerun to retry"
    )


def test_the_read_timeout_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as err:
        data_cli.main(["download", "xlsa17", "--root", "x", "--read-timeout", "0"])
    assert err.value.code == 2
    assert (
        "--read-timeout: must be a positive number of seconds, got '0'" in capsys.readouterr().err
    )


# ----------------------------------------------------------------------------- W&B


@pytest.fixture
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME and the XDG folders in ``tmp_path/home``; no W&B settings from the environment."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var, sub in (
        ("XDG_DATA_HOME", ".local/share"),
        ("XDG_CACHE_HOME", ".cache"),
        ("XDG_CONFIG_HOME", ".config"),
    ):
        monkeypatch.setenv(var, str(home / sub))
    for var in {*(v for v in os.environ if v.startswith("WANDB_")), "WANDB_DATA_DIR"}:
        monkeypatch.delenv(var, raising=False)  # and put back as it was after the test
    monkeypatch.setattr(loggers, "_own_data_dir", None, raising=False)
    return home


def wandb_cfg(mode: str, **extra: Any) -> LoggerSpec:
    return LoggerSpec(name="wandb", mode=mode, project="p", **extra)


def test_wandb_online_times_out_within_30_s_and_falls_back_offline(
    fake_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """wandb itself is faked: online start fails like an unreachable server, offline starts."""
    calls: list[dict[str, Any]] = []

    class FakeWandbLogger:
        def __init__(self, **kwargs: Any) -> None:
            self.kwargs = kwargs
            calls.append(kwargs)

        @property
        def experiment(self) -> object:
            if self.kwargs["mode"] == "online":
                raise RuntimeError(
                    'Timed out while retrying: Post "http://127.0.0.1:9/graphql": connection '
                    "refused\nConsider increasing the init_timeout setting:\n  wandb.init(...)"
                )
            return object()

    monkeypatch.setattr(loggers, "WandbLogger", FakeWandbLogger)
    run_dir = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logger = tracking.make_logger(wandb_cfg("online"), run_dir, {})
    assert [c["mode"] for c in calls] == ["online", "offline"]
    assert isinstance(logger, FakeWandbLogger)
    assert calls[0]["settings"].init_timeout <= 30
    messages = [str(w.message) for w in caught]
    assert messages == [
        'W&B could not start online (RuntimeError: Timed out while retrying: Post "http://'
        '127.0.0.1:9/graphql": connection refused; logger.init_timeout=30 s); logging offline '
        f"instead, upload later with: wandb sync {run_dir / 'wandb'}/offline-run-*"
    ]


def test_wandb_artifact_staging_stays_out_of_home(fake_home: Path, tmp_path: Path) -> None:
    """A real offline W&B run: a table (staged as a copy by wandb), a checkpoint artifact and
    run files; nothing may be left under the home directory's wandb data folder."""
    from pytorch_lightning.loggers import WandbLogger

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    logger = tracking.make_logger(wandb_cfg("offline"), run_dir, {"model": "ale"})
    assert isinstance(logger, WandbLogger)
    try:
        ckpt = run_dir / "model.ckpt"
        ckpt.write_bytes(b"weights" * 100)
        metrics = run_dir / "metrics.json"
        metrics.write_text('{"H": 0.5}\n')
        tracking.log_table(logger, "selection/validation", ["lr", "H"], [[0.1, 0.5], [0.01, 0.4]])
        tracking.log_checkpoint(logger, ckpt, ["best"], {"epoch": 1})
        tracking.log_summary(logger, {"final/H": 0.5})
        tracking.attach_files(logger, [metrics])
    finally:
        tracking.finish(logger)
    home_data = fake_home / ".local" / "share" / "wandb"
    left = [p for p in home_data.rglob("*") if p.is_file()] if home_data.exists() else []
    assert left == []
    staged = [p for p in (run_dir / "wandb" / "data").rglob("*") if p.is_file()]
    assert staged, "the table's staged copy belongs in the run directory (wandb sync needs it)"
    assert "WANDB_DATA_DIR" not in os.environ  # put back after the run


# ----------------------------------------------------------------------------- image paths


def test_image_files_that_climb_out_of_the_image_root_are_refused(tmp_path: Path) -> None:
    """A feature file's ``image_files`` entry ``../outside.jpg`` must not reach a file beside
    ``--image-root`` (it did: the longest existing suffix was taken as it stood)."""
    from zsl.features.images import resolve_image_paths

    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(root / "a" / "x.jpg")
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.jpg")
    assert resolve_image_paths(["/authors/prefix/a/x.jpg"], root) == [root / "a" / "x.jpg"]
    with pytest.raises(DataError) as err:
        resolve_image_paths(["a/x.jpg", "../outside.jpg"], root)
    assert str(err.value) == (
        f"../outside.jpg: image entry 2 of 2 leads to {tmp_path / 'outside.jpg'}, outside the "
        f"image root {root}; a feature file's paths must stay under the image root"
    )


def test_wandb_online_against_an_unreachable_server_goes_offline(
    fake_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real wandb, server on a closed port of 127.0.0.1, ``logger.init_timeout=2``."""
    import socket

    from pytorch_lightning.loggers import WandbLogger

    with socket.socket() as probe:  # a port nothing listens on (bound, then closed)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    run_dir = tmp_path / "run"
    began = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logger = tracking.make_logger(wandb_cfg("online", init_timeout=2), run_dir, {})
    elapsed = time.monotonic() - began
    try:
        assert isinstance(logger, WandbLogger) and logger.experiment.settings.mode == "offline"
    finally:
        tracking.finish(logger)
    ours = [str(w.message) for w in caught if "W&B" in str(w.message)]
    assert len(ours) == 1 and "\n" not in ours[0], ours
    assert ours[0].startswith("W&B could not start online (") and (
        "logger.init_timeout=2 s); logging offline instead" in ours[0]
    )
    assert elapsed < 20
