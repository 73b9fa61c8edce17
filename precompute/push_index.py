"""Publish an index folder as a Hugging Face dataset repository, in one commit with a dataset card.

    python -m precompute.push_index DIR USER/NAME [--revision BRANCH] [--tag TAG] [--private] [--message MSG]

The token comes from HF_TOKEN or the `huggingface-cli login`, never from the command line;
HF_ENDPOINT selects another Hub. Prints the commit id, the revision a Space can pin.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m precompute.push_index", description=__doc__.split("\n")[0])
    parser.add_argument("index_dir", metavar="DIR", help="index folder written by precompute.build_index")
    parser.add_argument("repo_id", metavar="REPO_ID", help="dataset repo, user/name (created if missing)")
    parser.add_argument("--revision", default=None, help="branch to commit to (default main; created if missing)")
    parser.add_argument("--tag", default=None, help="also tag the new commit, e.g. v1, for a Space to pin")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--message", default=None, help="commit message (default: a summary of the index)")
    parser.add_argument("--card", type=Path, default=None, help="Markdown file to put at the top of the dataset card")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from retrieval.hub import HubError, push_index
    from retrieval.index import IndexFormatError

    try:
        card = args.card.read_text() if args.card is not None else None
        commit = push_index(
            args.index_dir, args.repo_id, private=args.private, commit_message=args.message,
            card=card, revision=args.revision, tag=args.tag,
        )
    except (HubError, IndexFormatError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"pushed {args.index_dir} to dataset {args.repo_id} (commit {commit})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
