"""README and docs/ tables generated from the results files that the commands wrote.

    python -m benchmarks.readme_tables            # rewrite every generated table in README.md and docs/*.md
    python -m benchmarks.readme_tables --check    # exit 1 if any table differs from its results file

A generated table sits between two markers in the README:

    <!-- table results/evaluation.json#main -->
    | ... the rendered table ... |
    <!-- /table -->

The results file (JSON, written by a command in the repo) holds the table under
`tables.<name>` (or `table` when the marker has no `#name`):
`{"columns": [...], "align": "lrr", "rows": [[...], ...]}`, where `align` has one letter per
column (l or r; default: first left, rest right) and cells are strings or numbers. The command
that measures decides how each number is formatted, so the README shows exactly what it wrote.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^<!-- table (?P<file>[^#\s]+)(?:#(?P<name>[\w.-]+))? -->\n(?P<body>.*?)^<!-- /table -->$", re.M | re.S)


def render_table(table: dict) -> str:
    """Returns the markdown lines (with a final newline) of a {"columns", "rows", "align"} table."""
    columns = [str(c) for c in table["columns"]]
    align = table.get("align") or "l" + "r" * (len(columns) - 1)
    if len(align) != len(columns):
        raise ValueError(f"align {align!r} has {len(align)} letters for {len(columns)} columns")
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]
    for row in table["rows"]:
        if len(row) != len(columns):
            raise ValueError(f"row {row!r} has {len(row)} cells for {len(columns)} columns")
        lines.append("| " + " | ".join("" if c is None else str(c) for c in row) + " |")
    return "\n".join(lines) + "\n"


def table_of(results_file: Path, name: str | None) -> dict:
    """Returns the table `name` (or the only `table`) stored in a results file.

    Raises:
        ValueError: if the file or the table is missing, naming which.
    """
    if not results_file.is_file():
        raise ValueError(f"results file {results_file} is missing")
    data = json.loads(results_file.read_text())
    if name is None:
        if "table" not in data:
            raise ValueError(f"{results_file} has no 'table'")
        return data["table"]
    tables = data.get("tables") or {}
    if name not in tables:
        raise ValueError(f"{results_file} has no table {name!r} (has: {', '.join(tables) or 'none'})")
    return tables[name]


def regenerate(text: str, *, root: Path = ROOT) -> tuple[str, list[str]]:
    """Returns the README text with every generated table re-rendered, and the markers that changed."""
    changed = []

    def replace(m: re.Match) -> str:
        body = render_table(table_of(root / m["file"], m["name"]))
        label = m["file"] + (f"#{m['name']}" if m["name"] else "")
        if body != m["body"]:
            changed.append(label)
        return f"<!-- table {label} -->\n{body}<!-- /table -->"

    return MARKER.sub(replace, text), changed


def documents(root: Path = ROOT) -> list[Path]:
    """Returns the files whose tables are generated: README.md and every page of docs/."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def regenerate_file(path: Path, *, root: Path = ROOT, check: bool = False) -> list[str]:
    """Re-renders one file's tables (relative paths in markers are from `root`); returns the stale ones.

    With `check` nothing is written.
    """
    new, changed = regenerate(path.read_text(), root=root)
    if changed and not check:
        path.write_text(new)
    return changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.readme_tables", description=__doc__.split("\n")[0])
    parser.add_argument("--readme", type=Path, default=None,
                        help="only this file (results paths relative to its folder); default README.md and docs/*.md")
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if a table is stale")
    args = parser.parse_args(argv)
    files = [(args.readme, args.readme.parent)] if args.readme else [(path, ROOT) for path in documents()]
    changed = []
    for path, root in files:
        stale = regenerate_file(path, root=root, check=args.check)
        changed += [f"{path.name}: {label}" for label in stale]
    if args.check:
        for label in changed:
            print(f"stale table: {label} (run python -m benchmarks.readme_tables)", file=sys.stderr)
        return 1 if changed else 0
    print(f"{len(changed)} table(s) rewritten: {', '.join(changed) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
