"""Start a test server as a child process, wait until it answers, stop it by its process id."""

import http.client
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

STARTUP_TIMEOUT_S = 60.0


@dataclass
class Server:
    """A running child server: its URL, process, and the file its requests are logged to."""

    url: str
    process: subprocess.Popen
    log: Path | None = None

    def requests(self) -> list[str]:
        """'METHOD path' lines of every request the server has received so far."""
        if self.log is None or not self.log.exists():
            return []
        return self.log.read_text().splitlines()

    def stop(self) -> None:
        stop_process(self.process)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(process: subprocess.Popen) -> None:
    """Terminate the child by its own pid (SIGTERM, then SIGKILL) and reap it."""
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def answers(port: int) -> bool:
    """Whether an HTTP server on 127.0.0.1:port answers a request (any status)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/api/health-probe")
        connection.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        connection.close()


def start(command: list[str], workdir: Path, *, port: int | None = None, port_file: Path | None = None,
          log: Path | None = None) -> Server:
    """Run ``command`` and return once its HTTP server answers.

    Args:
        command: argv of the server.
        workdir: its working directory; its output goes to ``workdir/server.out``.
        port: the port it was told to listen on, or None when it reports one in ``port_file``.
        port_file: where the server writes the port it bound (port 0), read once it appears.
        log: the file the server logs its requests to, for ``Server.requests``.

    Raises:
        RuntimeError: the server exited or did not answer in time; the message holds its output.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    output = workdir / "server.out"
    with open(output, "wb") as out:
        process = subprocess.Popen(command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{command[:3]} exited with {process.returncode}:\n{output.read_text()}")
            if port is None and port_file is not None and port_file.exists():
                port = int(port_file.read_text())
            if port is not None and answers(port):
                if log is not None:
                    log.unlink(missing_ok=True)  # the readiness probe is not a request under test
                return Server(url=f"http://127.0.0.1:{port}", process=process, log=log)
            time.sleep(0.1)
        raise RuntimeError(f"{command[:3]} did not answer within {STARTUP_TIMEOUT_S} s:\n{output.read_text()}")
    except BaseException:
        stop_process(process)
        raise
