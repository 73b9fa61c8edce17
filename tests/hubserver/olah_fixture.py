"""Run olah (a self-hosted Hub mirror) in offline local-mirror mode over a folder of git repos.

olah serves each git repository under ``<mirrors>/<type>s/<org>/<name>`` as a Hub repository
(branches, tags and commits are its revisions) through the Hub's own download routes, which
huggingface_hub's real client uses unchanged. ``offline = true`` keeps it from ever calling
huggingface.co.
"""

import sys
from pathlib import Path

from tests.hubserver.process import Server, free_port, start

_CONFIG = """\
[basic]
host = "127.0.0.1"
port = {port}
repos-path = "{cache}"
mirrors-path = ["{mirrors}"]
# Never contacted (offline), but pointed at this machine so nothing could leave it.
hf-scheme = "http"
hf-netloc = "127.0.0.1:9"
hf-lfs-netloc = "127.0.0.1:9"
mirror-scheme = "http"
mirror-netloc = "127.0.0.1:{port}"
mirror-lfs-netloc = "127.0.0.1:{port}"

[accessibility]
offline = true
"""


def start_olah(mirrors: Path, workdir: Path) -> Server:
    """Start olah serving the git repositories under ``mirrors``; returns once it answers.

    Args:
        mirrors: folder holding ``datasets/<org>/<name>`` git repositories.
        workdir: olah's config, cache, logs and output go here.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "olah.toml"
    config.write_text(_CONFIG.format(port=port, cache=workdir / "cache", mirrors=mirrors))
    command = [sys.executable, "-m", "olah.server", "--config", str(config), "--log-path", str(workdir / "logs")]
    return start(command, workdir, port=port)
