"""What every request goes through before it reaches a handler: which files it may name, how big it may be.

A public Space answers anyone, not only our page. Two rules hold for every route:
- a request may only name files it uploaded itself (`uploaded_path`): Gradio's upload folder,
  checked by Gradio's own `is_allowed_file`, never another server path;
- a request body is capped while it is read, and an over-long address is refused at once
  (`RequestLimits`), each with one log line and the JSON error {"error", "title"}.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from webapp.messages import NOT_UPLOADED

log = logging.getLogger("landmark-search")

# What is read and dropped after a body was refused at the cap, before the connection closes.
LINGER_BYTES = 1024 * 1024


class NotUploaded(ValueError):
    """A request named a file that it did not upload; the message is the same for every such path."""

    def __init__(self):
        super().__init__(NOT_UPLOADED)


def upload_folder() -> Path:
    """Returns Gradio's upload folder (GRADIO_TEMP_DIR, else <temp>/gradio), where uploads and cached outputs live."""
    from gradio import utils as gradio_utils  # imported when first needed: app.py refuses a bad start-up without it

    return Path(gradio_utils.get_upload_folder())


def checked_upload(path: str) -> str:
    """Returns `path` when it is a file in Gradio's upload folder; raises NotUploaded otherwise.

    The check is Gradio's own (`gradio.utils.is_allowed_file`, as its preprocessing runs it for
    uploads), on the path with links and ".." resolved. A missing file and a file elsewhere get
    the same refusal, so a request cannot tell which server paths exist.
    """
    from gradio import utils as gradio_utils

    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):  # a loop of links, a NUL byte
        raise NotUploaded() from None
    allowed, _ = gradio_utils.is_allowed_file(resolved, blocked_paths=[], allowed_paths=[],
                                              created_paths=[upload_folder()])
    if not allowed or not resolved.is_file():
        raise NotUploaded()
    return str(resolved)


def json_error(status: int, title: str, message: str, *, close: bool = True) -> tuple[dict, bytes]:
    """Returns the ASGI start message and body of the JSON error {"error", "title"} with this status.

    `close`: the server closes the connection once the answer is sent (the rest of a body unread).
    """
    body = json.dumps({"error": message, "title": title}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    start = {"type": "http.response.start", "status": status,
             "headers": headers + ([(b"connection", b"close")] if close else [])}
    return start, body


class RequestLimits:
    """ASGI middleware: caps every request body while it is read, and the length of every address.

    - A body declared larger than `max_body` (Content-Length) is answered 413 before any of it
      is read; one sent without a length (chunked) is read only up to `max_body`, then answered
      413, and the handler sees the client as gone.
    - A path or query string longer than `max_url` is answered 414 before any route runs.

    Args:
        app: the ASGI app to guard.
        max_body: the most bytes of body any request may send.
        max_url: the most bytes of path, and of query string.
    """

    def __init__(self, app, *, max_body: int, max_url: int):
        self.app, self.max_body, self.max_url = app, max_body, max_url

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("raw_path") or scope.get("path", "").encode()
        if len(path) > self.max_url or len(scope.get("query_string", b"")) > self.max_url:
            return await self._refuse(send, 414, "Address too long",
                                      f"The address is over {self.max_url} bytes: send the query in the body.")
        declared = dict(scope.get("headers") or []).get(b"content-length")
        try:
            declared = int(declared) if declared is not None else None
        except ValueError:
            return await self._refuse(send, 400, "Bad request", "The Content-Length header is not a number.")
        if declared is not None and declared > self.max_body:
            # A body a little over the cap (a photo too large) is read and dropped, so that the client,
            # which sends it whole before it reads the answer, gets the 413 instead of a reset
            # connection. A larger one is not read at all: the connection closes after the answer.
            polite = declared <= 2 * self.max_body
            await self._refuse(send, 413, "Too large", self._too_large(), close=not polite)
            return await self._drain(receive, declared if polite else 0, seconds=10.0)
        received, answered, started = 0, False, False

        async def limited_receive():
            nonlocal received, answered
            if answered:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    answered = True
                    if not started:
                        await self._refuse(send, 413, "Too large", self._too_large(), read=received)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if answered:
                return  # the handler's answer after our 413 has nowhere to go
            started = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)
        if answered:
            await self._drain(receive, LINGER_BYTES)

    @staticmethod
    async def _drain(receive, most: int, seconds: float = 2.0) -> None:
        """Reads and drops up to `most` bytes of body (at most `seconds`): closing a connection on
        unread data resets it, and the client may lose the answer already sent."""
        import anyio

        dropped = 0
        with anyio.move_on_after(seconds):
            while dropped < most:
                message = await receive()
                if message["type"] != "http.request":
                    return
                dropped += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return

    def _too_large(self) -> str:
        return f"The request is over the {self.max_body // (1024 * 1024)} MB limit."

    @staticmethod
    async def _refuse(send, status: int, title: str, message: str, read: int = 0, close: bool = True) -> None:
        log.info("refused (HTTP %d): %s (%d bytes of body read)", status, message, read)
        start, body = json_error(status, title, message, close=close)
        await send(start)
        await send({"type": "http.response.body", "body": body})


def refuse_non_uploads_in_our_words() -> None:
    """Makes Gradio's own input check refuse a non-upload with our one message, and one log line.

    Gradio checks, before any handler, that every file an event names is in its upload folder
    (`gradio.processing_utils._check_allowed`, once `Blocks.has_launched` is set); without the
    check it copies the named server file into its cache, where it would pass for an upload. Its
    refusal is an InvalidPathError that names the path and prints a traceback for each request.
    This turns that refusal, for inputs only, into a gr.Error with `NOT_UPLOADED`: the same for
    every path, whether it exists or not, and logged as one line. Idempotent.
    """
    import gradio as gr
    from gradio import processing_utils
    from gradio.exceptions import InvalidPathError

    check = processing_utils._check_allowed
    if getattr(check, "ours", False):
        return

    def checked(path, check_in_upload_folder: bool):
        try:
            return check(path, check_in_upload_folder)
        except InvalidPathError:
            if not check_in_upload_folder:
                raise  # an output the app itself returned: a bug of ours, with its traceback
            log.info("refused: Not an image: %s", NOT_UPLOADED)
            raise gr.Error(NOT_UPLOADED, title="Not an image", print_exception=False) from None

    checked.ours = True
    processing_utils._check_allowed = checked


def return_freed_memory() -> bool:
    """Makes glibc give a decoded image's memory back to the system as soon as it is freed; True if it could.

    A 99-megapixel decode is freed in blocks of a few MB. With glibc's defaults each request
    thread keeps such blocks in an arena of its own, so the resident size grew with every large
    query, thread after thread (benchmarks.abuse: 0.9 GB idle to 3.6 GB after 8 large PNGs).
    A fixed 1 MB mmap threshold maps every larger block on its own and unmaps it when freed; two
    arenas bound the rest. A no-op where the C library is not glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold, m_arena_max = -3, -8
    return bool(mallopt(m_mmap_threshold, 1 << 20)) and bool(mallopt(m_arena_max, 2))
