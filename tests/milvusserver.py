"""Milvus servers for the tests and the Milvus benchmark, started and stopped by them.

- `LiteServer`: Milvus Lite (`milvus-lite`, pure Python) as a gRPC server in its own process,
  `python -m milvus_lite server`: the embedded default, in a process the tests can stop and start.
- `StandaloneServer`: a real Milvus server, the standalone build of Milvus 2.3.5 that the `milvus`
  package on PyPI ships (one binary with an embedded etcd and local storage; requirements-dev.txt).

Both listen on 127.0.0.1 on a free port, keep their data in a folder given by the caller, and
are stopped by pid. A started one answers at `uri` until `stop`; `start` again reopens the same
data on the same port (a restarted server, for the connection-loss tests).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from tests.appserver.process import free_port


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_free(port: int, timeout: float = 30.0) -> None:
    """Waits until nothing listens on `port` any more (a stopped server's socket is gone)."""
    deadline = time.monotonic() + timeout
    while _answers(port) and time.monotonic() < deadline:
        time.sleep(0.2)


class LiteServer:
    """Milvus Lite serving `data_dir` over gRPC on 127.0.0.1, in a child process."""

    kind = "Milvus Lite server"

    def __init__(self, data_dir: Path, log_path: Path):
        self.data_dir, self.log_path, self.port = Path(data_dir), Path(log_path), free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 300.0) -> None:
        """Starts the server and waits (`timeout` seconds at most: generous, for a loaded machine) until it listens."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.data_dir),
                 "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not _answers(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Milvus Lite did not start on port {self.port}: see {self.log_path}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        self.proc = None
        _wait_free(self.port)


class StandaloneServer:
    """A real Milvus server (the `milvus` package's standalone Milvus 2.3.5) with its data in `base_dir`."""

    kind = "Milvus 2.3.5 standalone server"

    def __init__(self, base_dir: Path):
        from milvus import MilvusServer

        self.base_dir, self.port = Path(base_dir), free_port()
        self.server = MilvusServer(wait_for_started=False)  # `start` waits, longer than the package's 180 s
        self.server.set_base_dir(str(self.base_dir))
        self.server.config.configs["proxy_port"] = self.port  # this port or none: a restart comes back on it
        # The package probes ports with a plain bind, which the old server's connections in TIME_WAIT
        # refuse for a minute after a stop; Milvus itself listens with SO_REUSEADDR, so probe as it binds.
        self.server.config.try_bind_port = _bind_reusable
        self.server.show_startup_banner = False

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 600.0) -> None:
        """Starts the server and waits until it is healthy: about 40 s alone, several times that on a
        loaded machine, so `timeout` (seconds) is generous."""
        self.server.start()
        try:
            self.server.wait_started(timeout=timeout * 1000)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.server.running:
            self.server.stop()
        _wait_free(self.port)


def _bind_reusable(port: int):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    return sock


def standalone_available() -> bool:
    """Tells whether the `milvus` package (requirements-dev.txt) is installed."""
    try:
        import milvus  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def running(server):
    """Starts `server`, yields it, stops it however the block ends."""
    server.start()
    try:
        yield server
    finally:
        server.stop()
