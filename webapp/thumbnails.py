"""The index's thumbnails and previews as files for Gradio to serve, and the small inline pictures of a query."""

from __future__ import annotations

import base64
import io
import os
import tempfile
from pathlib import Path

from PIL import Image

from retrieval.index import Index

PREVIEW_SIDE = 320
PLACEHOLDER_SIDE = 192  # the longest side of a thumbnail (retrieval.features.THUMBNAIL_SIDE)


class Thumbnails:
    """The index's thumbnails and previews as files for Gradio to serve.

    Components get file paths, not PIL images: Gradio saves a PIL image to its cache by
    rewriting a file named after its content, which a concurrent request for the same thumbnail
    may be downloading at that moment (measured: truncated downloads with 20 clients). Files here
    are written once, atomically, and Gradio copies them into its cache atomically. Only files
    the app returns are served; this folder itself is not.
    """

    def __init__(self, index: Index, folder: Path):
        self.index = index
        self.folder = Path(folder)

    def jpeg(self, image_id: str) -> str:
        """Returns the path of the stored JPEG thumbnail (or the placeholder), for galleries."""
        return self._file(image_id, ".jpg", lambda: self.index.thumbnail(image_id) or self._placeholder_jpeg())

    def _placeholder_jpeg(self) -> bytes:
        buffer = io.BytesIO()
        self.image_placeholder().save(buffer, format="JPEG")
        return buffer.getvalue()

    @staticmethod
    def image_placeholder() -> Image.Image:
        """Returns the placeholder shown for an image without a thumbnail."""
        return Image.new("RGB", (PLACEHOLDER_SIDE, PLACEHOLDER_SIDE * 3 // 4), (200, 200, 200))

    def preview(self, image_id: str) -> str:
        """Returns the path of the stored preview (the thumbnail when the index has none), for the editor."""
        return self._file(image_id, ".preview.jpg", lambda: self.index.preview(image_id) or self._placeholder_jpeg())

    def is_unedited(self, image_id: str, path: str) -> bool:
        """Tells whether the file at `path` is, byte for byte, the preview the app put in the editor.

        This is how a search knows its query is still that index image: an upload, even of the same
        photo, is another file. The editor's change events cannot tell, as the app sets its value too.
        """
        try:
            return Path(path).read_bytes() == self.index.preview(image_id)
        except OSError:
            return False

    def _file(self, image_id: str, suffix: str, data) -> str:
        # Named by row: ids are paths under the image folder and must not become file names.
        path = self.folder / f"{self.index.row_of(image_id)}{suffix}"
        if not path.exists():
            fd, staging = tempfile.mkstemp(dir=self.folder, suffix=suffix)
            with os.fdopen(fd, "wb") as f:
                f.write(data())
            os.replace(staging, path)
        return str(path)


def result_gallery(thumbnails: Thumbnails, result) -> list[tuple[str, str]]:
    """Returns (thumbnail file, caption) pairs; a caption reads "#rank · similarity" over the image id.

    The similarity is the cosine of the query and the image, the number a person can read; the
    ranking score (αQE, diffusion) only orders the list.
    """
    return [
        (thumbnails.jpeg(image_id), f"#{rank} · {similarity:.3f}\n{image_id}")
        for rank, (image_id, similarity) in enumerate(zip(result.ids, result.similarities), 1)
    ]


def inline_jpeg(image: Image.Image, side: int, alt: str) -> str:
    """Returns an <img> of `image` scaled to at most `side` px, inline: no cache file to race on."""
    small = image.copy()
    small.thumbnail((side, side), Image.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=85)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/jpeg;base64,{data}" alt="{alt}">'


def preview_html(image: Image.Image | None) -> str:
    """Returns a small inline picture of the query as searched, with its size in pixels."""
    if image is None:
        return ""
    return (f'<figure class="searched">{inline_jpeg(image, PREVIEW_SIDE, "the query as searched")}'
            f"<figcaption>Query as searched: {image.width} × {image.height} px</figcaption></figure>")
