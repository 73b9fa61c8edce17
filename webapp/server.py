"""One port for the UI, its Gradio API and the HTTP endpoint: bound first, guarded, and cleaned up however it stops."""

from __future__ import annotations

import atexit
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

# Nothing heavy at import: app.py binds the port with `bind` before gradio, fastapi or TensorFlow load.


def bind(host: str, port: int) -> socket.socket:
    """Returns a socket bound to host:port, for the server to listen on once the index is loaded.

    Bound first, before anything slow: a port in use is said at once, and nothing claims to serve.

    Raises:
        SystemExit: the port cannot be had; one line, exit status 1.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        # The protocol given, not 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets
        # that say IPPROTO_TCP, and with it on, each kept-alive request waited about 40 ms for an ACK.
        sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise SystemExit(f"Cannot serve on {host}:{port}: {e.strerror or e}. Is another program using it? "
                         "Choose another with --port.") from None
    return sock


def serve(engine, *, sock: socket.socket, concurrency: int) -> None:
    """Serves the UI, its Gradio API and the plain HTTP endpoint on one port, sharing one engine budget.

    The thumbnail folder is removed however the server stops: Ctrl-C, SIGTERM (as a Space stops
    it) or an error. Uploaded queries kept for links live in Gradio's upload folder, which
    outlives a restart of the app, not of the machine (`webapp.kept`).
    """
    import fastapi
    import gradio as gr
    import uvicorn

    from webapp.context import AppContext
    from webapp.gate import Gate
    from webapp.guard import RequestLimits, refuse_non_uploads_in_our_words, upload_folder
    from webapp.http_api import HTTP_MAX_WAITING, MAX_BODY_BYTES, MAX_FILE_SIZE, MAX_URL_BYTES, add_http_api
    from webapp.kept import KeptQueries
    from webapp.thumbnails import Thumbnails
    from webapp.ui import CSS, DRAG_JS, QUEUE_MAX_SIZE, build_demo

    folder = Path(tempfile.mkdtemp(prefix="landmark-thumbnails-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    # uvicorn re-raises the signal that stopped it; as SystemExit, not the default handler's
    # immediate exit, it runs the `finally` below and the atexit handlers.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        ctx = AppContext(engine, Thumbnails(engine.index, folder), Gate(concurrency, HTTP_MAX_WAITING),
                         KeptQueries(upload_folder() / "kept-queries"))
        demo = build_demo(ctx, concurrency=concurrency)
        demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=concurrency)
        app = fastapi.FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
        add_http_api(app, ctx)  # before the mount, which takes every other path
        app = gr.mount_gradio_app(
            app, demo, path="", max_file_size=MAX_FILE_SIZE, allowed_paths=[], ssr_mode=False, show_error=False,
            footer_links=["api", "gradio"], css=CSS, theme=gr.themes.Soft(), js=DRAG_JS,
        )
        # Gradio checks that inputs are uploads and outputs allowed files only once it has
        # launched, which mounting never says: say it, so its own checks run too.
        demo.has_launched = True
        refuse_non_uploads_in_our_words()
        guarded = RequestLimits(app, max_body=MAX_BODY_BYTES, max_url=MAX_URL_BYTES)
        host, port = sock.getsockname()[:2]
        print(f"Serving on http://{host}:{port} (HTTP API: POST /api/search)", file=sys.stderr, flush=True)
        uvicorn.Server(uvicorn.Config(guarded, log_level="warning")).run(sockets=[sock])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
