"""What unfinished request heads cost the edge: RSS and open connections under a slowloris, as JSON.

    python bench/slowloris.py [--root DIR] [--model-dir DIR] [--connections 200] [--head-bytes 1048576]
                              [--hold-s 15] [--json]

Starts `python -m edge_container serve` of the checkout at --root (default: this one; a checkout from before
edge_container/http_limits.py shows the old behaviour), then opens --connections connections from this
process, each sending a request line and --head-bytes of one header that never ends, in 16 KB writes.
Figures (the server's VmRSS from /proc, MB):

  rss_before_mb            served a few requests, no attack
  rss_peak_mb              the highest RSS sampled (every 50 ms) while the heads are sent
  rss_sent_mb              once every connection has sent its head or been refused
  open_after_send          connections the server still holds then
  answers                  what the refused ones read (status line -> count; none: closed without one)
  open_after_hold          ... and --hold-s later (longer than EDGE_HEAD_TIMEOUT_S, 10 s by default)
  rss_after_close_mb       2 s after this side closed every connection
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # runnable as a plain script too
    sys.path.insert(0, str(REPO_ROOT))

from bench import edge_serving
from bench.edge_serving import Service, sequential_latencies

WRITE_BYTES = 16384


@contextlib.contextmanager
def checkout(root: Path) -> Iterator[None]:
    """`bench.edge_serving.Service` starts the checkout at its module's REPO_ROOT (its cwd and PYTHONPATH):
    point it at `root` while a service starts."""
    saved, edge_serving.REPO_ROOT = edge_serving.REPO_ROOT, root
    try:
        yield
    finally:
        edge_serving.REPO_ROOT = saved


def start(root: Path, model_dir: Path, **env: str) -> Service:
    with checkout(root):
        return Service(model_dir, **env)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class PeakRss:
    """The highest RSS of `pid`, sampled in a thread while the block runs."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        self.pid, self.every_s, self.peak = pid, every_s, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _attack(port: int, connections: int, head_bytes: int) -> tuple[list[Stream], Counter[str]]:
    """Open the connections and send every head (unfinished): those the server still holds, and what the
    others read before they were closed (their status lines; `none`: nothing, or a reset)."""
    answers: Counter[str] = Counter()

    async def one() -> Stream | None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nhost: edge\r\nx-slow: ")
            for sent in range(0, head_bytes, WRITE_BYTES):
                writer.write(b"a" * min(WRITE_BYTES, head_bytes - sent))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=0.5)
        except TimeoutError:
            return reader, writer  # nothing in 0.5 s: the server holds it
        except (ConnectionError, OSError):
            line = b""
        answers[line.decode("latin-1").strip() or "none"] += 1
        writer.close()
        return None

    streams = await asyncio.gather(*(one() for _ in range(connections)))
    return [s for s in streams if s is not None], answers


async def _still_open(streams: list[Stream]) -> int:
    """How many of the connections the server has not closed (what it sends first, a 408, is read away)."""

    async def closed(reader: asyncio.StreamReader) -> bool:
        try:
            while await asyncio.wait_for(reader.read(65536), timeout=0.2):
                pass
        except TimeoutError:
            return False
        except (ConnectionError, OSError):
            pass
        return True

    return sum(not c for c in await asyncio.gather(*(closed(reader) for reader, _ in streams)))


def measure(service: Service, *, connections: int, head_bytes: int, hold_s: float) -> dict[str, Any]:
    pid = service.proc.pid
    sequential_latencies(service.port, 50)  # warm: the first requests allocate what every later one reuses
    time.sleep(0.5)
    before = rss_mb(pid)

    async def run() -> dict[str, Any]:
        with PeakRss(pid) as peak:
            streams, answers = await _attack(service.port, connections, head_bytes)
            sent, open_after_send = rss_mb(pid), await _still_open(streams)
        await asyncio.sleep(hold_s)
        open_after_hold = await _still_open(streams)
        held = rss_mb(pid)
        for _, writer in streams:
            writer.close()
        await asyncio.sleep(2.0)
        return {"rss_before_mb": round(before, 1), "rss_peak_mb": round(max(peak.peak, sent), 1),
                "rss_sent_mb": round(sent, 1), "open_after_send": open_after_send, "answers": dict(answers),
                "hold_s": hold_s, "open_after_hold": open_after_hold, "rss_after_hold_mb": round(held, 1),
                "rss_after_close_mb": round(rss_mb(pid), 1)}

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="the checkout whose edge_container serves")
    parser.add_argument("--model-dir", type=Path, help="an artifact folder (default: build the tiny test artifact)")
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--head-bytes", type=int, default=1 << 20, help="bytes of the unfinished header each sends")
    parser.add_argument("--hold-s", type=float, default=15.0, help="how long the connections are then held")
    parser.add_argument("--json", action="store_true", help="print the result as JSON (the default prints it too)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            from tests.fixtures.tiny_artifact import make_tiny_artifact  # TensorFlow: the bench only

            model_dir = make_tiny_artifact(Path(tmp) / "tiny", version="bench-tiny", seed=0)
        service = start(args.root.resolve(), model_dir)
        try:
            result = measure(service, connections=args.connections, head_bytes=args.head_bytes, hold_s=args.hold_s)
        finally:
            service.close()
    print(json.dumps({"root": str(args.root), "connections": args.connections, "head_bytes": args.head_bytes,
                      **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
