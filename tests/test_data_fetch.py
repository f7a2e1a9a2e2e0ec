"""``hmem data fetch`` against a local HTTP server on 127.0.0.1 that serves the benchmark files of
the data directory: a good file, a corrupted one (refused by its checksum), and a connection
dropped mid-file (resumed with a range request)."""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hmem.cli import main
from hmem.data.fetch import REMOTES, FetchError, fetch
from hmem.data.loading import read_series


class _Files(BaseHTTPRequestHandler):
    """Serves ``files`` (name -> bytes) with range requests; names in ``drop_once`` lose their
    connection half-way through the first response."""

    files: dict[str, bytes] = {}
    drop_once: set[str] = set()
    requests: list[tuple[str, str | None]] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        name = self.path.rsplit("/", 1)[-1]
        body = self.files.get(name)
        self.requests.append((name, self.headers.get("Range")))
        if body is None:
            self.send_error(404)
            return
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get(
            "Range") else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if name in self.drop_once:
            self.drop_once.discard(name)
            self.wfile.write(body[start: start + len(body) // 2])
            self.wfile.flush()
            self.connection.close()
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server(data_dir):
    files = {"ETTm1.csv": gzip.decompress((data_dir / "ETTm1.csv.gz").read_bytes()),
             "weather.csv": gzip.decompress((data_dir / "weather.csv.gz").read_bytes())}
    handler = type("Handler", (_Files,), {"files": files, "drop_once": set(), "requests": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/mirror", handler
    httpd.shutdown()
    httpd.server_close()


def test_fetch_verifies_places_and_prints_the_data_dir(server, tmp_path, capsys):
    url, _ = server
    assert main(["data", "fetch", "ETTm1", "Weather", "--to", str(tmp_path),
                 "--mirror", url]) == 0
    out = capsys.readouterr().out
    assert "ETTm1: " in out and "SHA-256 verified" in out
    assert f"--data-dir {tmp_path.resolve()}" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ETTm1.csv", "weather.csv"]
    assert read_series(tmp_path / "ETTm1.csv").values.shape == (69680, 7)
    assert main(["data", "fetch", "ETTm1", "--to", str(tmp_path), "--mirror", url]) == 0
    assert "already there" in capsys.readouterr().out  # verified, not downloaded again


def test_a_corrupted_file_is_refused_and_leaves_nothing_that_looks_complete(server, tmp_path):
    url, handler = server
    body = bytearray(handler.files["ETTm1.csv"])
    body[1000] ^= 1
    handler.files["ETTm1.csv"] = bytes(body)
    with pytest.raises(FetchError, match=r"ETTm1: the file from .* has SHA-256 .* expected "
                                         r"6ce1759b.*refused and deleted"):
        fetch(["ETTm1"], tmp_path, mirror=url, say=lambda line: None)
    assert list(tmp_path.iterdir()) == []
    assert main(["data", "fetch", "ETTm1", "--to", str(tmp_path), "--mirror", url]) == 2


def test_a_dropped_connection_resumes_where_it_stopped(server, tmp_path):
    url, handler = server
    handler.drop_once.add("weather.csv")
    said: list[str] = []
    (path,) = fetch(["Weather"], tmp_path, mirror=url, backoff=0, say=said.append)
    assert path.name == "weather.csv" and "SHA-256 verified" in said[-1]
    assert any("network error" in line and "retrying (2/3)" in line for line in said)
    ranges = [r for name, r in handler.requests if name == "weather.csv"]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"


def test_unknown_names_and_unreachable_servers_say_what_to_do(tmp_path):
    with pytest.raises(FetchError, match="no public source is pinned for ETTx9: choose from "
                                         "ETTm1, Weather"):
        fetch(["ETTx9"], tmp_path)
    with pytest.raises(FetchError, match=r"failed 2 times .* next run resumes"):
        fetch(["ETTm1"], tmp_path, mirror="http://127.0.0.1:9/none", retries=2, backoff=0,
              timeout=2, say=lambda line: None)
    assert set(REMOTES) == {"ETTm1", "Weather"}
