"""``zsl-data download xlsa17`` against an HTTP server on 127.0.0.1 that this test starts: an
archive it builds from the tiny benchmark, a download cut short and resumed, a corrupt member,
and the verification's one line per problem."""

from __future__ import annotations

import io
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import write_xlsa17

from zsl.cli import data as data_cli


def build_archive(tmp: Path, names: tuple[str, ...] = ("TINY",)) -> bytes:
    """A zip laid out like the official release: ``xlsa17/data/<DATASET>/*.mat``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("xlsa17/README.txt", "tiny stand-in of the xlsa17 release\n")
        for name in names:
            ds = write_xlsa17(tmp / "src", name)
            for file in ("att_splits.mat", "res101.mat"):
                zf.write(ds.root / name / file, f"xlsa17/data/{name}/{file}")
    return buffer.getvalue()


class Server:
    """Serves ``body`` at ``/xlsa17.zip`` with byte ranges; ``cut`` > 0 makes the next plain
    GET announce the whole length but close the connection after ``cut`` bytes."""

    def __init__(self, body: bytes) -> None:
        self.body, self.cut = body, 0
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path != "/xlsa17.zip":
                    self.send_error(404)
                    return
                wanted = self.headers.get("Range")
                server.ranges.append(wanted)
                start = int(wanted.split("=")[1].rstrip("-")) if wanted else 0
                payload = server.body[start:]
                self.send_response(206 if wanted else 200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if server.cut and not wanted:
                    self.wfile.write(payload[: server.cut])
                    server.cut = 0
                    self.close_connection = True
                    return
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/xlsa17.zip"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(build_archive(tmp_path))
    yield srv
    srv.close()


def cli(root: Path, *extra: str) -> list[str]:
    return [
        "download",
        "xlsa17",
        "--root",
        str(root),
        "--datasets",
        "TINY",
        "--no-progress",
        *extra,
    ]


def test_an_interrupted_download_resumes_and_verifies(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "data"
    server.cut = 5000
    with pytest.raises(SystemExit) as err:
        data_cli.main(cli(root, "--url", server.url))
    total = len(server.body)
    assert err.value.code == (
        f"error: {server.url}: download interrupted at 5000 of {total} bytes; rerun to resume"
    )
    assert (root / "xlsa17.zip.part").stat().st_size == 5000
    assert not (root / "xlsa17.zip").exists() and not (root / "TINY").exists()

    data_cli.main(cli(root, "--url", server.url))  # resumes: only the rest is sent
    assert server.ranges == [None, "bytes=5000-"]
    assert (root / "xlsa17.zip").read_bytes() == server.body
    assert not (root / "xlsa17.zip.part").exists()
    assert sorted(p.name for p in (root / "TINY").iterdir()) == ["att_splits.mat", "res101.mat"]
    out = capsys.readouterr().out
    assert "unpacked TINY" in out and "verified TINY" in out


def test_an_http_error_is_one_line(server: Server, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as err:
        data_cli.main(cli(tmp_path / "d", "--url", server.url.replace("xlsa17", "nothing")))
    assert err.value.code == (
        f"error: {server.url.replace('xlsa17', 'nothing')}: download failed: HTTP 404 Not Found"
    )


def test_a_corrupt_member_is_refused(tmp_path: Path) -> None:
    body = bytearray(build_archive(tmp_path))
    # flip one byte inside the stored res101.mat (stored, so the bytes are the file's own)
    with zipfile.ZipFile(io.BytesIO(bytes(body))) as zf:
        info = zf.getinfo("xlsa17/data/TINY/res101.mat")
    data_start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    body[data_start + info.file_size // 2] ^= 0xFF
    archive = tmp_path / "xlsa17.zip"
    archive.write_bytes(bytes(body))
    with pytest.raises(SystemExit) as err:
        data_cli.main(cli(tmp_path / "d", "--archive", str(archive)))
    assert err.value.code == (
        f"error: {archive}: member xlsa17/data/TINY/res101.mat is corrupt (CRC check failed); "
        "delete it and rerun"
    )
    assert not (tmp_path / "d" / "TINY").exists()


def test_verify_reports_every_problem_on_its_own_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "data"
    write_xlsa17(root, "GOOD")
    write_xlsa17(root, "HTML")
    (root / "HTML" / "res101.mat").write_text("<!DOCTYPE html><html><body>500</body></html>")
    write_xlsa17(root, "NOVAL", drop_split_keys=["val_loc"])
    write_xlsa17(
        root, "ZEROBASED", edit=lambda s, f: s.update(test_unseen_loc=s["test_unseen_loc"] - 1)
    )
    with pytest.raises(SystemExit) as err:
        data_cli.main(
            [
                "verify",
                "xlsa17",
                "--root",
                str(root),
                "--datasets",
                "GOOD,HTML,NOVAL,ZEROBASED,GONE",
            ]
        )
    assert err.value.code == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4, lines
    assert lines[0] == (
        f"error: {root / 'HTML' / 'res101.mat'}: an HTML page, not a MATLAB file (a failed or "
        "redirected download); download it again"
    )
    assert lines[1].startswith(
        f"error: {root / 'NOVAL' / 'att_splits.mat'}['val_loc']: missing key"
    )
    assert lines[2].startswith(f"error: {root / 'ZEROBASED' / 'att_splits.mat'}['test_unseen_loc']")
    assert lines[3] == f"error: {root / 'GONE'}: dataset folder not found"


def test_help_explains_the_layout(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        data_cli.main(["download", "--help"])
    text = capsys.readouterr().out
    for fragment in ("att_splits.mat", "trainval_loc", "1-based", "res101.mat", "--archive"):
        assert fragment in text
