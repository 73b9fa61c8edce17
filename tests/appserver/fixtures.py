"""pytest fixtures for the app tests: one live app over the Lite0 index for the whole session.

Test modules load this with `pytest_plugins = ["tests.appserver.fixtures"]`, so that every module
shares the same app (a plugin's session fixtures are global; fixtures imported into two modules
would start two apps).
"""

from __future__ import annotations

import pytest

from tests.appserver.process import ROOT, running_app


@pytest.fixture(scope="session")
def app_log(tmp_path_factory):
    """The file the shared app's stdout and stderr go to."""
    return tmp_path_factory.mktemp("app") / "app.log"


@pytest.fixture(scope="session")
def app_url(lite0_index, app_log):
    """The URL ("http://127.0.0.1:PORT/") of app.py serving `lite0_index`."""
    with running_app(["--index", str(lite0_index)], app_log) as url:
        yield url


@pytest.fixture(scope="session")
def artifacts_dir():
    """artifacts/ at the repository root (ignored by git): screenshots worth keeping."""
    folder = ROOT / "artifacts"
    folder.mkdir(exist_ok=True)
    return folder
