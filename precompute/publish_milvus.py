"""Publish an index into a Milvus collection, incrementally.

    python -m precompute.publish_milvus --index DIR --milvus URI --collection NAME [--index-type IVF_SQ8]

URI is a Milvus server or cluster (http://host:19530), a managed Milvus, or a local path ending
in .db (Milvus Lite: no server). The token, when the server needs one, comes from the
environment variable MILVUS_TOKEN, never from the command line. A second run against the same
collection writes only new and changed descriptors and deletes the ids the index no longer has.
The collection, its dimension, index type and parameters, row count and revision are recorded
in the index's index.json under "milvus" (never the URI or the token); `app.py --milvus URI`
then serves the index from the collection.
"""

from __future__ import annotations

import argparse
import os
import sys

from tqdm import tqdm

from retrieval.milvus import DEFAULT_INDEX_TYPE, INDEX_TYPES


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m precompute.publish_milvus", description=__doc__.split("\n")[0])
    parser.add_argument("--index", required=True, metavar="DIR", help="the index folder to publish")
    parser.add_argument("--milvus", default=os.environ.get("MILVUS_URI"), metavar="URI",
                        help="http://host:19530, a managed Milvus's URI, or a local FILE.db for Milvus Lite "
                        "(default: MILVUS_URI); the token comes from MILVUS_TOKEN")
    parser.add_argument("--collection", default=None, metavar="NAME",
                        help="the collection (default: the one index.json records from an earlier publication)")
    parser.add_argument("--index-type", choices=INDEX_TYPES, default=DEFAULT_INDEX_TYPE,
                        help=f"the collection's vector index when it is created (default {DEFAULT_INDEX_TYPE}, "
                        "chosen by measurement: docs/milvus.md)")
    parser.add_argument("--replace", action="store_true",
                        help="drop the collection first, whatever it holds (another network or pipeline)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from retrieval.index import IndexFormatError, load_index, update_meta
    from retrieval.milvus import CollectionMismatch, MilvusError, connect, publish_rows, safe_uri

    if not args.milvus:
        print("error: give --milvus URI (or set MILVUS_URI)", file=sys.stderr)
        return 2
    try:
        index = load_index(args.index)
    except IndexFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    name = args.collection or (index.meta.get("milvus") or {}).get("collection")
    if not name:
        print("error: give --collection NAME (this index was never published)", file=sys.stderr)
        return 2
    bar = tqdm(total=0, unit="row", desc="publishing", dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        client = connect(args.milvus, token=os.environ.get("MILVUS_TOKEN") or None)
        report = publish_rows(client, name, index.features, index.ids, index.meta, index_type=args.index_type,
                              replace=args.replace, progress=progress, log=tqdm.write)
    except (MilvusError, CollectionMismatch, ValueError) as e:
        bar.close()
        print(f"error: {e}", file=sys.stderr)
        return 1
    bar.close()
    update_meta(args.index, milvus=report.record)
    record = report.record
    print(f"published {args.index} to collection {name!r} at {safe_uri(args.milvus)}: {record['count']} rows "
          f"({report.added} added, {report.changed} changed, {report.removed} removed, {report.kept} kept), "
          f"{record['index_type']} {record['index_params']}, in {report.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
