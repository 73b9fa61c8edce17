"""pytest fixtures: a Hub to push to and pull from, over real HTTP on 127.0.0.1.

- ``upload_server``: tests/hubserver/upload_server.py, the write side (create repo, commit).
- ``olah_server``: olah in offline local-mirror mode, the read side, over the same git repos.
- ``hub_proxy``: a factory for a request-counting (and optionally file-damaging) proxy in
  front of olah; pulls go through it so a test can see every request that reached the server.
- ``hf_cache``: a fresh huggingface_hub cache folder, with no token from this machine's login.

Import them in a test module with ``from tests.hubserver.fixtures import *``.
"""

import itertools
import sys
from pathlib import Path

import pytest

from tests.hubserver.olah_fixture import start_olah
from tests.hubserver.process import Server, start

__all__ = ["hub_mirrors", "upload_server", "olah_server", "hub_proxy", "hf_cache", "repo_name"]

_HERE = Path(__file__).parent
_names = itertools.count()


@pytest.fixture(scope="module")
def hub_mirrors(tmp_path_factory) -> Path:
    """Folder of the git repositories both servers share: ``datasets/<org>/<name>``."""
    return tmp_path_factory.mktemp("mirrors")


@pytest.fixture(scope="module")
def upload_server(hub_mirrors, tmp_path_factory) -> Server:
    """The upload server, committing into ``hub_mirrors``; stopped after the module."""
    workdir = tmp_path_factory.mktemp("upload-server")
    port_file, log = workdir / "port", workdir / "requests.log"
    command = [sys.executable, str(_HERE / "upload_server.py"), "--mirrors", str(hub_mirrors),
               "--port-file", str(port_file), "--log", str(log)]
    server = start(command, workdir, port_file=port_file, log=log)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def olah_server(hub_mirrors, tmp_path_factory) -> Server:
    """olah serving ``hub_mirrors`` read-only; stopped after the module."""
    server = start_olah(hub_mirrors, tmp_path_factory.mktemp("olah"))
    yield server
    server.stop()


@pytest.fixture
def hub_proxy(olah_server, tmp_path):
    """Factory: ``hub_proxy(truncate=NAME | corrupt=NAME)`` starts a proxy in front of olah.

    Returns a Server whose ``url`` is the endpoint to pull from and whose ``requests()``
    lists what reached olah. Every proxy started is stopped after the test.
    """
    started = []

    def make(*, truncate: str | None = None, corrupt: str | None = None) -> Server:
        workdir = tmp_path / f"proxy-{len(started)}"
        workdir.mkdir()
        port_file, log = workdir / "port", workdir / "requests.log"
        command = [sys.executable, str(_HERE / "proxy.py"), "--upstream", olah_server.url,
                   "--port-file", str(port_file), "--log", str(log)]
        if truncate is not None:
            command += ["--truncate", truncate]
        if corrupt is not None:
            command += ["--corrupt", corrupt]
        server = start(command, workdir, port_file=port_file, log=log)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty huggingface_hub cache folder; no HF_TOKEN and no stored login are seen."""
    import huggingface_hub.constants

    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    # huggingface_hub read these paths at import; point them at the empty home too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return home / "hub"


@pytest.fixture
def repo_name() -> str:
    """A repository id no other test in this session uses."""
    return f"tester/index-{next(_names)}"
