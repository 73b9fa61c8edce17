"""Landmark image search: a Gradio app over a prebuilt index.

Reads its settings, loads one index and the network recorded in it, builds the interface and
serves it, with the Gradio API (/search, /match) and a plain HTTP endpoint (POST /api/search) on
the same port. Features, search and the match view live in `retrieval/`; nothing here computes them.

    .venv/bin/python app.py --index DIR            # a folder made by `.venv/bin/python -m precompute.build_index`
    INDEX_REPO=user/name .venv/bin/python app.py   # an index on the Hugging Face Hub (INDEX_REVISION: a tag/commit)
    .venv/bin/python app.py --images DIR           # index a folder of images (incrementally), then serve it
    .venv/bin/python app.py                        # the index embedded next to this file, in index/
    .venv/bin/python app.py --index DIR --milvus URI   # its rows searched in the Milvus collection it
                                                       # was published to (MILVUS_URI, MILVUS_TOKEN, MILVUS_COLLECTION)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from webapp.gate import CONCURRENCY_LIMIT
from webapp.server import bind

# Only what refuses a bad start-up is imported here: gradio, scipy, scikit-learn and TensorFlow load
# once the port, the source and the index are known to be good (benchmarks.app_latency times the refusals).

DEFAULT_INDEX = Path(__file__).resolve().parent / "index"
# Converted networks (OpenVINO IR), as precompute.options.RUNTIME_CACHE: a second start converts nothing.
RUNTIME_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "landmark-search" / "networks"
NO_INDEX_MESSAGE = """No index to serve. Give one of:
  --index DIR        a folder made by `.venv/bin/python -m precompute.build_index --images ... --out DIR`
  INDEX_REPO=owner/name [INDEX_REVISION=tag-or-commit]   an index on the Hugging Face Hub
  --images DIR       a folder of images: the app indexes it (incrementally) and serves it
or put an index folder at {default}."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--index", type=Path, help="an index folder (default: the embedded one, ./index)")
    source.add_argument("--images", type=Path, help="a folder of images to index, then serve")
    parser.add_argument("--out", type=Path, help="with --images: where the index goes (default: indexes/<folder>-<network>)")
    parser.add_argument("--network", default="efficientnet-b7",
                        help="with --images: efficientnet-b7 or efficientnet-lite0 (works offline)")
    parser.add_argument("--weights", default="imagenet", help="with --images: imagenet or a weights file")
    parser.add_argument("--runtime", default="auto",
                        help="what runs the network: auto (default: onnxruntime if it loads, else keras; openvino "
                        "for bfloat16), onnxruntime, openvino, keras")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                        help="bfloat16: openvino's reduced-precision inference (faster, less exact)")
    parser.add_argument("--runtime-cache", type=Path, default=RUNTIME_CACHE,
                        help=f"folder of converted networks, reused across starts (default {RUNTIME_CACHE})")
    parser.add_argument("--milvus", default=os.environ.get("MILVUS_URI") or None, metavar="URI",
                        help="search the index's rows in Milvus (a server's http://host:19530, or a local FILE.db "
                        "for Milvus Lite; default MILVUS_URI; token: MILVUS_TOKEN): no feature matrix is loaded")
    parser.add_argument("--collection", default=os.environ.get("MILVUS_COLLECTION") or None, metavar="NAME",
                        help="with --milvus: the collection (default MILVUS_COLLECTION, else the one index.json records)")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY_LIMIT,
                        help=f"searches run at once (default {CONCURRENCY_LIMIT}, measured best on 2 cores)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    return parser.parse_args(argv)


def open_index(args: argparse.Namespace, environ, *, rows: bool = True):
    """Returns the index to serve, from the first source given: --index, --images (indexed here
    first), INDEX_REPO (at INDEX_REVISION), else the embedded ./index.

    The command line comes before the environment, so that a Space's INDEX_REPO setting does
    not override an explicit local run. `rows`: False loads a local index without its feature
    matrix (its rows are searched in Milvus).
    """
    from retrieval.index import load_index

    if args.index is not None:
        return load_index(args.index, features=rows)
    if args.images is not None:
        out = args.out or Path("indexes") / f"{args.images.resolve().name}-{args.network}"
        return load_index(build_from_images(args.images, out, args.network, args.weights, runtime_kwargs(args)))
    if environ.get("INDEX_REPO"):
        from retrieval.hub import pull_index

        return pull_index(environ["INDEX_REPO"], revision=environ.get("INDEX_REVISION") or None)
    if DEFAULT_INDEX.is_dir():
        return load_index(DEFAULT_INDEX, features=rows)
    raise SystemExit(NO_INDEX_MESSAGE.format(default=DEFAULT_INDEX))


def check_source(args: argparse.Namespace, environ) -> None:
    """Refuses, before anything slow is imported, a source that `open_index` would refuse later:
    no source at all, a missing image folder, an --index folder that is not an index.

    Raises:
        SystemExit: no index to serve.
        IndexFormatError, FileNotFoundError: as `open_index` would, with the same messages.
    """
    if args.milvus is not None and args.images is not None:
        raise SystemExit("Cannot serve this index: --milvus serves a published index; give --index DIR "
                         "(see precompute.publish_milvus)")
    if args.index is not None:
        from retrieval.index import read_meta  # numpy, scipy and scikit-learn: only to check an --index

        read_meta(args.index)
    elif args.images is not None:
        if not args.images.is_dir():
            raise FileNotFoundError(f"image folder not found: {args.images}")
    elif not environ.get("INDEX_REPO") and not DEFAULT_INDEX.is_dir():
        raise SystemExit(NO_INDEX_MESSAGE.format(default=DEFAULT_INDEX))


def build_from_images(images: Path, out: Path, network_name: str, weights: str, runtime: dict | None = None) -> Path:
    """Indexes `images` into `out`, reusing what an earlier run there already did; returns `out`."""
    from tqdm import tqdm

    from retrieval.build import build_index
    from retrieval.defaults import DEFAULT

    print(f"Indexing {images} into {out} with {network_name}", file=sys.stderr, flush=True)
    with tqdm(total=0, unit="img", desc="embedding", dynamic_ncols=True) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        from retrieval.networks import build_network

        network = build_network(network_name, weights=weights, **(runtime or {}))
        report = build_index(images, out, network, DEFAULT.descriptor, **DEFAULT.build_options(),
                             progress=progress, log=tqdm.write)
    print(f"{report.count} images ({report.embedded} embedded, {report.reused} reused, "
          f"{len(report.skipped)} skipped)", file=sys.stderr, flush=True)
    return out


def runtime_kwargs(args: argparse.Namespace) -> dict:
    """Returns build_network's runtime, precision and cache_dir from the parsed options."""
    return {"runtime": args.runtime, "precision": args.precision, "cache_dir": args.runtime_cache}


def connect_milvus(uri: str, environ):
    """Returns a client connected to the Milvus at `uri` (token: MILVUS_TOKEN).

    Raises:
        SystemExit: one line naming the URI (never the token) when Milvus cannot be reached.
    """
    from retrieval.milvus import MilvusError, connect

    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # its retries' tracebacks: our one line instead
    try:
        return connect(uri, token=environ.get("MILVUS_TOKEN") or None)
    except MilvusError as e:
        raise SystemExit(f"Cannot serve this index: {e}") from None


def milvus_rows(client, uri: str, index, collection: str | None):
    """Returns the `MilvusRows` of the collection that serves `index`, after checking that it matches.

    Raises:
        SystemExit: no collection named, or one that does not hold this index (dimension, network,
            row count or publication differ).
    """
    from retrieval.milvus import CollectionMismatch, MilvusError, MilvusRows, check_collection, safe_uri

    record = index.meta.get("milvus") or {}
    name = collection or record.get("collection")
    if not name:
        raise SystemExit("Cannot serve this index: it was never published to Milvus; give --collection NAME "
                         "or publish it with python -m precompute.publish_milvus")
    try:
        record = check_collection(client, name, index.meta)
    except CollectionMismatch as e:
        raise SystemExit(f"Cannot serve this index from {safe_uri(uri)}: {e}") from None
    except MilvusError as e:
        raise SystemExit(f"Cannot serve this index: {e} (at {safe_uri(uri)})") from None
    return MilvusRows(client, name, index.ids, dim=index.dim, search_params=record.get("search_params"),
                      rerank=record.get("rerank", 256), where=f"Milvus at {safe_uri(uri)}")


def load_engine(index, runtime: dict | None = None, milvus=None):
    """Returns a warmed-up engine over `index`, with the network recorded in it, run by the runtime
    that `runtime` (build_network's runtime, precision and cache_dir) names; searched through
    `milvus` (a `MilvusRows`) when given."""
    from retrieval.engine import SearchEngine
    from retrieval.networks import build_network  # TensorFlow: imported once the port and the index are known

    network = build_network(index.meta["network"], weights=index.meta["weights"], **(runtime or {}))
    print(network.describe(), file=sys.stderr, flush=True)
    engine = SearchEngine(index, network, milvus=milvus)
    engine.warm_up()
    return engine


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    # FAISS (imported with retrieval.build, before a Milvus or an index is checked) says at INFO which CPU
    # build it loaded: noise in front of a one-line refusal.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    sock = bind(args.host, args.port)
    try:
        check_source(args, os.environ)  # seconds before TensorFlow would be imported
    except (ValueError, FileNotFoundError) as e:  # IndexFormatError is a ValueError
        raise SystemExit(f"Cannot serve this index: {e}") from None
    from retrieval.build import BuildError, os_message
    from retrieval.hub import HubError
    from retrieval.index import IndexFormatError
    from retrieval.search import SearchUnavailable
    from webapp.guard import return_freed_memory
    from webapp.server import serve

    started = time.perf_counter()
    index = rows = None
    if args.milvus:  # the collection is checked before TensorFlow is imported: a refusal takes seconds
        client = connect_milvus(args.milvus, os.environ)
        try:
            index = open_index(args, os.environ, rows=False)  # the rows stay in the collection
        except (IndexFormatError, FileNotFoundError, HubError) as e:
            raise SystemExit(f"Cannot serve this index: {e}") from None
        rows = milvus_rows(client, args.milvus, index, args.collection)
    return_freed_memory()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up notices, unless chosen
    from retrieval.networks import NetworkError  # imports TensorFlow: after the port is ours

    try:
        engine = load_engine(index or open_index(args, os.environ), runtime_kwargs(args), milvus=rows)
    except (IndexFormatError, FileNotFoundError, NetworkError, BuildError, HubError) as e:
        raise SystemExit(f"Cannot serve this index: {e}") from None
    except OSError as e:  # a full disk, a read-only or forbidden folder while indexing --images
        raise SystemExit(f"Cannot serve this index: {os_message(e)}") from None
    except SearchUnavailable as e:  # Milvus went away between the check and the warm-up query
        raise SystemExit(f"Cannot serve this index: {e}") from None
    where = f", searched in collection {rows.collection!r} ({rows.where})" if rows is not None else ""
    print(f"Loaded {len(engine)} images in {time.perf_counter() - started:.1f} s{where}", file=sys.stderr, flush=True)
    serve(engine, sock=sock, concurrency=args.concurrency)


if __name__ == "__main__":
    main()
