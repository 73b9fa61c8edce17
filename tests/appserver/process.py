"""Runs app.py in a subprocess on 127.0.0.1 for tests that talk to a live app."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """Returns a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_env(temp_dir: Path) -> dict:
    """Returns the environment for the app: offline, quiet, with its own Gradio cache folder."""
    env = dict(os.environ)
    env.update(
        GRADIO_TEMP_DIR=str(temp_dir),
        XDG_CACHE_HOME=str(temp_dir / "cache"),  # the app's runtime cache (converted networks)
        GRADIO_ANALYTICS_ENABLED="False",
        HF_HUB_OFFLINE="1",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
    )
    for name in ("INDEX_REPO", "INDEX_REVISION", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "MILVUS_URI",
                 "MILVUS_TOKEN", "MILVUS_COLLECTION"):
        env.pop(name, None)
    return env


@contextmanager
def running_app(args: list[str], log_path: Path, *, timeout: float = 300.0, env: dict | None = None):
    """Starts `python app.py ARGS --port P`, waits until it answers, yields its URL, then stops it.

    `env`: variables set for the app on top of `app_env`'s.

    Raises:
        RuntimeError: if the app exits or does not answer within `timeout` seconds; the
            message ends with the tail of its log.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    temp_dir = log_path.parent / f"gradio-{port}"
    temp_dir.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), *args, "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env={**app_env(temp_dir), **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_up(url, proc, log_path, timeout)
        yield url
    finally:
        stop(proc)


def wait_until_up(url: str, proc: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}:\n{tail(log_path)}")
        try:
            with urllib.request.urlopen(url + "gradio_api/info", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"app.py did not answer at {url} within {timeout:.0f} s:\n{tail(log_path)}")


def stop(proc: subprocess.Popen) -> None:
    """Stops the app by its pid (SIGTERM, then SIGKILL after 10 s)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
