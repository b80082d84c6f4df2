import hashlib
import socket
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from model_build.data.fetch import CLINC150_SHA256, fetch_clinc150
from model_build.errors import FetchError

PAYLOAD = b'{"train": [["hello", "greet"]]}\n' * 1000


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """Base URL of a real HTTP server on 127.0.0.1 serving tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "data_full.json").write_bytes(PAYLOAD)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_downloads_verifies_and_moves_into_place(served: str, tmp_path: Path) -> None:
    dest = tmp_path / "data" / "clinc150" / "data_full.json"

    got = fetch_clinc150(dest, url=f"{served}/data_full.json", sha256=hashlib.sha256(PAYLOAD).hexdigest(),
                         progress=True)

    assert got == dest and dest.read_bytes() == PAYLOAD
    assert leftovers(dest.parent) == ["data_full.json"]  # no temp file left


def test_wrong_digest_raises_and_leaves_nothing(served: str, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "data_full.json"
    actual = hashlib.sha256(PAYLOAD).hexdigest()

    with pytest.raises(FetchError) as err:
        fetch_clinc150(dest, url=f"{served}/data_full.json", progress=False)  # pinned CLINC digest

    assert CLINC150_SHA256 in str(err.value) and actual in str(err.value)
    assert leftovers(dest.parent) == []


def test_existing_verified_file_is_kept_and_a_foreign_one_is_not_overwritten(tmp_path: Path) -> None:
    dest = tmp_path / "data_full.json"
    dest.write_bytes(PAYLOAD)
    unreachable = "http://127.0.0.1:9/never-called"

    assert fetch_clinc150(dest, url=unreachable, sha256=hashlib.sha256(PAYLOAD).hexdigest()) == dest
    with pytest.raises(FetchError, match="already exists"):
        fetch_clinc150(dest, url=unreachable)
    assert dest.read_bytes() == PAYLOAD


def test_http_404_is_a_fetch_error(served: str, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_clinc150(tmp_path / "x.json", url=f"{served}/missing.json", progress=False)
    assert leftovers(tmp_path) == ["www"]


def test_connection_refused_is_a_fetch_error(tmp_path: Path) -> None:
    # A bound but non-listening socket refuses connections, and nothing else can take its port meanwhile.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(FetchError, match="cannot connect"):
            fetch_clinc150(tmp_path / "x.json", url=f"http://127.0.0.1:{port}/x", progress=False)
    assert leftovers(tmp_path) == []


def test_a_silent_server_times_out(tmp_path: Path) -> None:
    # Listening but never accepting: the connect succeeds (backlog), the response never comes.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/x"
        with pytest.raises(FetchError, match="no response within 0.2 s"):
            fetch_clinc150(tmp_path / "x.json", url=url, timeout_s=0.2, progress=False)
    assert leftovers(tmp_path) == []
