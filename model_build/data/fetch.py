"""Download a data file over HTTP(S), verify its pinned SHA-256, and move it into place atomically."""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from model_build.errors import FetchError

CLINC150_URL = "https://raw.githubusercontent.com/clinc/oos-eval/master/data/data_full.json"
CLINC150_SHA256 = "36923c3705a59e08fe9c3883d8bc2dd966ef93e22cb78ac41171782a698d56e0"
# The CLINC150 authors' pool of Wikipedia sentences (their out-of-scope augmentation), same repository and
# licence: unlabelled texts for `build --unlabeled`.
CLINC150_WIKI_URL = "https://raw.githubusercontent.com/clinc/oos-eval/master/data/all_wiki_sents.txt"
CLINC150_WIKI_SHA256 = "570704f8120d13d27dda90d116a0b2365e121139f72c2967b65f55465ebfad44"
CLINC150_WIKI_NAME = "all_wiki_sents.txt"
_CHUNK = 1 << 16


def fetch_clinc150(
    dest: Path | str,
    *,
    url: str = CLINC150_URL,
    sha256: str = CLINC150_SHA256,
    timeout_s: float = 30.0,
    progress: bool = True,
) -> Path:
    return fetch(url, dest, sha256=sha256, timeout_s=timeout_s, progress=progress)


def fetch_clinc150_wiki(dest: Path | str, *, url: str = CLINC150_WIKI_URL, sha256: str = CLINC150_WIKI_SHA256,
                        timeout_s: float = 30.0, progress: bool = True) -> Path:
    return fetch(url, dest, sha256=sha256, timeout_s=timeout_s, progress=progress)


def fetch(url: str, dest: Path | str, *, sha256: str, timeout_s: float = 30.0, progress: bool = True) -> Path:
    dest = Path(dest)
    if dest.is_file():
        actual = _sha256_file(dest)
        if actual == sha256:
            return dest
        # Never overwrite a file we did not write: it may be someone's edited copy.
        raise FetchError(f"{dest} already exists with SHA-256 {actual}, expected {sha256}; "
                         "move it away to download a fresh copy")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Same folder as dest, so the final rename is atomic (same file system).
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as exc:
        raise FetchError(f"cannot write to {dest.parent}: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            actual = _download(url, out, timeout_s=timeout_s, progress=progress, desc=dest.name)
            out.flush()
            os.fsync(out.fileno())
        if actual != sha256:
            raise FetchError(f"{url}: SHA-256 mismatch: expected {sha256}, got {actual}; file not saved")
        os.replace(tmp, dest)
    except OSError as exc:
        raise FetchError(f"cannot write {dest}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _download(url: str, out: BinaryIO, *, timeout_s: float, progress: bool, desc: str) -> str:
    digest = hashlib.sha256()
    try:
        # The timeout bounds the connect and every read, so a stalled server cannot hang the build.
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            total = response.headers.get("Content-Length")
            with tqdm(total=int(total) if total and total.isdigit() else None, unit="B", unit_scale=True,
                      unit_divisor=1024, desc=desc, disable=not progress, leave=False) as bar:
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise FetchError(f"{url}: cannot connect: {exc.reason}") from None
    except TimeoutError:
        raise FetchError(f"{url}: no response within {timeout_s:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(f"{url}: download failed: {exc!r}") from None
    return digest.hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
