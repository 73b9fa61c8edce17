"""The one object every handler gets: what the page, /search, /match and POST /api/search share."""

from __future__ import annotations

from dataclasses import dataclass, field

from retrieval.engine import SearchEngine
from webapp.gate import Gate
from webapp.kept import KeptQueries
from webapp.thumbnails import Thumbnails

N_EXAMPLES = 8


@dataclass
class AppContext:
    """What the handlers share.

    Args:
        engine: the index and its network.
        thumbnails: the index's thumbnails and previews as files.
        gate: the engine's budget, held while decoding, searching and matching, whichever way a query came in.
        kept: the uploaded queries kept for links (None: links to uploads are not offered).
        examples: the index ids shown as examples (default: `N_EXAMPLES` spread over the index).
    """

    engine: SearchEngine
    thumbnails: Thumbnails
    gate: Gate
    kept: KeptQueries | None = None
    examples: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.examples:
            self.examples = example_ids(self.engine.index)

    @property
    def index(self):
        return self.engine.index


def example_ids(index, n: int = N_EXAMPLES) -> list[str]:
    """Returns n index ids spread evenly over the index."""
    count = len(index)
    n = min(n, count)  # an index smaller than n shows each image once
    return [str(index.ids[i * count // n]) for i in range(n)]
