"""The dataset downloader against an HTTP server on 127.0.0.1: resume, checks, offline message."""

from __future__ import annotations

import http.server
import io
import threading
import zipfile
from pathlib import Path

import pytest

from inat_keras.cli.download import main
from inat_keras.data.download import download_dataset
from inat_keras.errors import UserError


def make_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as bundle:
        for subset in ("train", "val"):
            for name in ("Aves", "Fungi"):
                for i in range(3):
                    # incompressible-ish payload so the archive is large enough to cut in half
                    bundle.writestr(f"inaturalist_12K/{subset}/{name}/{i}.jpg", bytes(range(256)) * 64 + bytes([i]))
        bundle.writestr("__MACOSX/._junk", b"x")
    return buffer.getvalue()


class ArchiveServer:
    """Serves one archive with HTTP Range support; the first ``cut_first`` responses stop halfway."""

    def __init__(self, payload: bytes, cut_first: int = 0) -> None:
        self.payload, self.cut_first, self.ranges = payload, cut_first, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                start = 0
                header = self.headers.get("Range")
                server.ranges.append(header)
                if header:
                    start = int(header.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
                else:
                    self.send_response(200)
                body = server.payload[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_first > 0:
                    server.cut_first -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.close()
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/nature_12K.zip"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def archive_server():
    servers = []

    def start(cut_first: int = 0) -> ArchiveServer:
        servers.append(ArchiveServer(make_archive(), cut_first))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_download_extracts_the_dataset_layout(archive_server, tmp_path: Path) -> None:
    server = archive_server()
    root = download_dataset(tmp_path / "data", url=server.url, progress=False)
    assert root == tmp_path / "data" / "inaturalist_12K"
    assert sorted(p.name for p in (root / "train").iterdir()) == ["Aves", "Fungi"]
    assert len(list((root / "val" / "Fungi").iterdir())) == 3
    assert not (tmp_path / "data" / "__MACOSX").exists()


def test_cut_off_download_fails_with_resume_hint_then_resumes_with_a_range_request(archive_server, tmp_path: Path) -> None:
    server = archive_server(cut_first=1)
    with pytest.raises(UserError, match="again to resume"):
        download_dataset(tmp_path, url=server.url, progress=False)
    part = tmp_path / "nature_12K.zip.part"
    half = part.stat().st_size
    assert 0 < half < len(server.payload)

    root = download_dataset(tmp_path, url=server.url, progress=False)
    assert server.ranges == [None, f"bytes={half}-"]
    assert (tmp_path / "nature_12K.zip").read_bytes() == server.payload
    assert (root / "train" / "Aves" / "0.jpg").read_bytes() == bytes(range(256)) * 64 + bytes([0])


def test_unreachable_server_gives_one_line_message_naming_archive_flag(tmp_path: Path, capsys) -> None:
    from inat_keras.cli.main import main as package_main

    # Port 9 on loopback has no listener: the connection is refused at once, nothing leaves the machine.
    status = package_main(["download", "--dest", str(tmp_path), "--url", "http://127.0.0.1:9/nature_12K.zip", "--quiet"])
    error = capsys.readouterr().err.strip()
    assert status == 2
    assert "\n" not in error and "--archive" in error and "127.0.0.1:9" in error


def test_damaged_archive_is_refused_before_extraction(tmp_path: Path) -> None:
    broken = tmp_path / "nature_12K.zip"
    broken.write_bytes(make_archive()[:-100])
    with pytest.raises(UserError, match="not a complete zip archive: give the path of the iNaturalist-12K zip"):
        download_dataset(tmp_path / "out", archive=broken)  # the user's own file: no advice to delete it
    assert not (tmp_path / "out" / "inaturalist_12K").exists()
    assert broken.exists()

    ours = tmp_path / "dl" / "nature_12K.zip"  # a copy an earlier download left cut off
    ours.parent.mkdir()
    ours.write_bytes(make_archive()[:-100])
    with pytest.raises(UserError, match="not a complete zip archive: delete it and download again"):
        download_dataset(tmp_path / "dl", url="http://127.0.0.1:9/nature_12K.zip")


def test_local_archive_flag_extracts_without_network(tmp_path: Path, capsys) -> None:
    archive = tmp_path / "nature_12K.zip"
    archive.write_bytes(make_archive())
    assert main(["--archive", str(archive), "--dest", str(tmp_path / "d")]) == 0
    assert "--data" in capsys.readouterr().out
    assert (tmp_path / "d" / "inaturalist_12K" / "train" / "Aves").is_dir()
