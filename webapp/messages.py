"""Every refusal the app says, in one place: the page, /search, /match and POST /api/search say the same words.

A refusal is a `QueryError`: a short title (which the HTTP endpoint maps to its status) and one
line in the user's terms, which never names a path on the server. Imports nothing heavy.
"""

from __future__ import annotations

MAX_FILE_MB = 20

NO_IMAGE = ("No image to search: upload or paste a photo, or pick an example (from code: send the file as "
            "\"image\").")
URL_MESSAGE = ("URLs are not fetched: send the image file itself (gradio_client: handle_file(path) of a local "
               "file; HTTP: multipart field \"image\").")
NOT_UPLOADED = ("The image must be a file uploaded with this request (gradio_client: handle_file(path); "
                "HTTP: POST /api/search with the multipart field \"image\").")
# Above the results when the collection holds no confident match (retrieval.confidence); they still show.
NO_CONFIDENT_MATCH = "No confident match in this collection: these are the most similar photos."


class QueryError(ValueError):
    """A query the app refuses, with a title and a one-line message that names no server path."""

    def __init__(self, title: str, message: str):
        super().__init__(message)
        self.title = title


def no_image() -> QueryError:
    return QueryError("No image", NO_IMAGE)


def wrong_field(name: str) -> QueryError:
    """A multipart request whose file came under another name than "image"."""
    return QueryError("No image", f"No image to search: send the file as the multipart field \"image\", not "
                      f"{name[:40]!r} (curl -F image=@photo.jpg).")


def text_field() -> QueryError:
    return QueryError("No image", "No image to search: the field \"image\" must be a file, not text "
                      "(curl -F image=@photo.jpg).")


def not_usable(reason: str) -> QueryError:
    """A file that is not an image we can decode safely: empty, cut short, not an image, too many pixels."""
    return QueryError("Not a usable image", f"This file cannot be used as a query: {reason}.")


def unavailable() -> QueryError:
    """The search backend does not answer (a Milvus collection out of reach); the app goes on."""
    return QueryError("Search unavailable", "The search service is not answering; try again in a moment.")


def unsearchable(reason: str) -> QueryError:
    """An image that decoded but that the network cannot take (`retrieval.features.ImageError` while embedding)."""
    return QueryError("Not a usable image", f"This image cannot be searched: {reason}.")


def too_large() -> QueryError:
    return QueryError("Too large", f"The file is over the {MAX_FILE_MB} MB upload limit.")


def bad_k(k, most: int) -> QueryError:
    return QueryError("Bad K", f"K must be a whole number from 1 to {most}; got {str(k)[:40]!r}.")


def bad_box(text) -> QueryError:
    return QueryError("Bad box", f"A box is four whole numbers x0,y0,x1,y1 in pixels; got {str(text)[:80]!r}.")


def empty_crop(box: tuple, size: tuple[int, int]) -> QueryError:
    """A box with no pixel of the image in it: outside the image, or of zero width or height.

    The error carries `box_text` and `size`, for a link to say what it left out.
    """
    error = QueryError("Empty crop", f"The box {','.join(str(v) for v in box)} holds no pixel of this "
                       f"{size[0]} × {size[1]} image: drag a box on the image, or clear the box.")
    error.box_text, error.size = ",".join(str(v) for v in box), tuple(size)
    return error


def unknown_image(image_id) -> QueryError:
    return QueryError("Unknown image", f"{str(image_id)[:80]!r} is not in this index.")


def busy(waiting: int) -> QueryError:
    return QueryError("Busy", f"{waiting} queries are already waiting; try again in a moment.")
