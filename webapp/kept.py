"""The uploaded queries the app keeps so that a link can bring a page back: for a day, within a disk budget.

A page's link names its uploaded query image by a token, `?q=<token>`, never by a path. The file
is kept only when someone asks for the link, as uploaded (byte for byte, so that the box and an
indexed photo's own descriptor still hold), in one folder of the app's, for `KEEP_SECONDS` after
the last time it was shared, and the oldest go first when the folder passes `KEEP_BYTES`.

A token is 22 characters of an HMAC of the file's bytes under a key drawn when the app starts:
unguessable, the same for the same file while the app runs, and the only thing a link can name.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

KEEP_SECONDS = 24 * 3600
KEEP_BYTES = 256 * 1024 * 1024
TOKEN = re.compile(r"[A-Za-z0-9_-]{22}")
# The kept file's name ends as its format says, so that Gradio serves it with the right type.
SUFFIXES = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp",
            "TIFF": ".tif"}
OTHER_SUFFIX = ".img"


class KeptQueries:
    """Uploaded query images kept for links, by token, in `folder`.

    Args:
        folder: where the files go (created if missing); nothing else is ever read through a token.
        seconds: how long a file is kept after it was last shared.
        max_bytes: the most the folder holds; the files shared longest ago are removed first.
        clock: the time now, in seconds (tests pass their own).
    """

    def __init__(self, folder: Path, *, seconds: float = KEEP_SECONDS, max_bytes: int = KEEP_BYTES,
                 clock: Callable[[], float] = time.time):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.seconds, self.max_bytes, self.clock = seconds, max_bytes, clock
        self._key = secrets.token_bytes(32)

    def keep(self, path: str | Path) -> str:
        """Keeps the file at `path` (an upload the app already decoded) and returns its token."""
        data = Path(path).read_bytes()
        token = base64.urlsafe_b64encode(hmac.new(self._key, data, hashlib.sha256).digest()[:16]).decode()[:22]
        target = self.folder / (token + suffix_of(path))
        if not target.is_file():
            fd, staging = tempfile.mkstemp(dir=self.folder, suffix=".part")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(staging, target)
        now = self.clock()
        os.utime(target, (now, now))  # shared again: kept a day from now
        self.sweep()
        return token

    def path_of(self, token) -> str | None:
        """Returns the kept file of `token`, or None: not a token, never kept, or kept too long ago."""
        if not isinstance(token, str) or not TOKEN.fullmatch(token):
            return None
        for suffix in (*dict.fromkeys(SUFFIXES.values()), OTHER_SUFFIX):
            path = self.folder / (token + suffix)
            try:
                if path.is_file() and self.clock() - path.stat().st_mtime <= self.seconds:
                    return str(path)
            except OSError:  # removed by a sweep meanwhile
                return None
        return None

    def sweep(self) -> None:
        """Removes the files kept too long, then the oldest until the folder is within `max_bytes`."""
        now, files = self.clock(), []
        for path in self.folder.iterdir():
            try:
                stat = path.stat()
            except OSError:
                continue
            if now - stat.st_mtime > self.seconds or (path.suffix == ".part" and now - stat.st_mtime > 3600):
                path.unlink(missing_ok=True)
            elif path.suffix != ".part":
                files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size


def suffix_of(path: str | Path) -> str:
    """Returns the file name ending of an image file's format (".jpg", ".png", ...), read from its header."""
    try:
        with Image.open(path) as image:
            return SUFFIXES.get(image.format, OTHER_SUFFIX)
    except Exception:  # not for us to refuse here: the search already decoded it  # noqa: BLE001
        return OTHER_SUFFIX
