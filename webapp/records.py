"""What an answer holds, for every way in: the result records with the URLs of their images, and the timings.

`records_of` is the one place where a result row is made for a caller: /search, POST /api/search
and the page's "Results as JSON" all show its rows.
"""

from __future__ import annotations

from urllib.parse import urlencode

# What GET /api/image serves of an index image: the stored thumbnail (192 px) or the larger preview.
IMAGE_SIZES = ("thumbnail", "preview")


def root_url(request) -> str:
    """Returns the app's address as the caller sees it ("http://host:port", behind a proxy its public one).

    Args:
        request: a Starlette request, or a gr.Request (which wraps one); None gives "" (relative URLs).
    """
    raw = getattr(request, "request", request)
    if raw is None or not hasattr(raw, "url"):
        return ""
    from gradio import route_utils

    return route_utils.get_root_url(raw, route_path=raw.url.path, root_path=None)


def image_url(root: str, image_id: str, size: str = "thumbnail") -> str:
    """Returns the URL of an index image's stored thumbnail or preview (GET /api/image)."""
    return f"{root}/api/image?{urlencode({'id': image_id, 'size': size})}"


def records_of(result, root: str) -> list[dict]:
    """Returns a SearchResult's rows, best first: its own fields ({rank, id, score, similarity}, see
    `SearchResult.to_records`) and the URLs of each image's `thumbnail` and `preview`.

    Args:
        result: a `retrieval.engine.SearchResult`.
        root: the app's address (`root_url`); "" gives URLs relative to it.
    """
    return [{**row, "thumbnail": image_url(root, row["id"]), "preview": image_url(root, row["id"], "preview")}
            for row in result.to_records()]


def confidence_of(result) -> dict:
    """Returns {"confident", "evidence"}: whether the collection holds a confident match (see
    `retrieval.confidence`); `confident` is None where no threshold was measured for the index."""
    return result.confidence.to_dict()


def timings_of(result, engine) -> dict:
    """Returns {"embed_ms", "search_ms", "total_ms", "runtime"} of a SearchResult, rounded to 0.01 ms."""
    return {
        "embed_ms": round(result.embed_ms, 2),
        "search_ms": round(result.search_ms, 2),
        "total_ms": round(result.embed_ms + result.search_ms, 2),
        "runtime": engine.network.runtime,  # what ran the network (retrieval.networks.RUNTIMES)
    }
