"""Reading rows of a memory-mapped feature matrix without mapping them into the process.

A million-row index keeps its matrix on disk (`retrieval.index.load_index` maps it read-only).
Touching rows through the mapping makes them part of the process's resident memory: the kernel
maps whole page-cache folios (up to megabytes) around every row touched, so the ANN's re-ranking
of 256 scattered rows a query had filled most of a 1M x 2,560 index's 5 GB within a few dozen
queries (`madvise(MADV_RANDOM)` did not help).
`take_rows` and `read_block` read the same bytes with `os.preadv` into ordinary arrays instead:
the file's pages stay in the page cache, shared and reclaimable, and out of the process.

Anything that is not a whole memory-mapped ``.npy`` matrix is indexed as usual; a `RowSource`
(rows held elsewhere, such as a Milvus collection) is asked for its rows.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import numpy as np

__all__ = ["OpenFile", "RowSource", "hold_file", "read_block", "take_rows"]


class OpenFile:
    """A file held open for reads by offset, closed when the object goes.

    Reads go to the file that was opened, even after its path names another one (an index folder
    replaced by a rebuild). A copy shares it; a pickled one opens the path again where it lands.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_RDONLY)
        self._closer = weakref.finalize(self, os.close, self.fd)

    def read(self, start: int, stop: int) -> bytes:
        return os.pread(self.fd, stop - start, start)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def __reduce__(self):
        return OpenFile, (self.path,)

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


class RowSource:
    """(n, d) float32 rows held elsewhere (a vector database), read by row number with `take`.

    Indexing with an integer array (`rows[[3, 1]]`) reads those rows; so do `take_rows` and the
    re-rankers that read rows through it. Subclasses define `take`, `__len__` and `dim`.
    """

    ndim = 2
    dtype = np.dtype(np.float32)
    dim: int

    def take(self, rows) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.dim

    def __getitem__(self, rows) -> np.ndarray:
        return self.take(rows)


def hold_file(features: np.memmap) -> np.memmap:
    """Keeps the file of a memory-mapped matrix open: `take_rows` and `read_block` then read the rows
    the mapping shows, even after the path names a new file."""
    features.held_file = OpenFile(features.filename)
    return features


def _source(features) -> tuple[int | str, int, int] | None:
    """Returns (held descriptor or file, byte offset of row 0, bytes per row) for a whole C-ordered memmap, else None."""
    if not isinstance(features, np.memmap) or features.ndim != 2 or not features.flags.c_contiguous:
        return None
    held = getattr(features, "held_file", None)
    path = getattr(features, "filename", None)
    if not path:
        return None
    row_bytes = features.strides[0]
    try:
        size = held.size() if held is not None else os.path.getsize(path)
    except OSError:
        return None
    # A slice of a memmap keeps its parent's offset: only the whole matrix, ending at the file's end, is safe.
    if int(features.offset) + len(features) * row_bytes != size:
        return None
    return (held.fd if held is not None else path), int(features.offset), row_bytes


def _opened(source):
    """Returns (descriptor, whether to close it) for a held descriptor or a path."""
    return (source, False) if isinstance(source, int) else (os.open(source, os.O_RDONLY), True)


def take_rows(features: np.ndarray, rows) -> np.ndarray:
    """Returns features[rows] (a new array, the features' dtype) for a 1-D sequence of row numbers.

    Raises:
        IndexError: a row outside 0..n-1 (negative rows are not counted from the end here).
    """
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if isinstance(features, RowSource):
        return features.take(rows)
    source = _source(features)
    if source is None:
        return np.asarray(features[rows])
    n = len(features)
    if len(rows) and (rows.min() < 0 or rows.max() >= n):
        raise IndexError(f"row out of range 0..{n - 1}")
    file, offset, row_bytes = source
    out = np.empty((len(rows), features.shape[1]), dtype=features.dtype)
    buffer = memoryview(out.reshape(-1).view(np.uint8))
    fd, close = _opened(file)
    try:
        for i, r in enumerate(rows.tolist()):
            _read_exactly(fd, buffer[i * row_bytes : (i + 1) * row_bytes], offset + r * row_bytes)
    finally:
        if close:
            os.close(fd)
    return out


def read_block(features: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Returns features[start:stop] as a new array (read from the file when the matrix is mapped)."""
    source = _source(features)
    start, stop = max(0, start), min(len(features), stop)
    if source is None:
        return np.asarray(features[start:stop])
    file, offset, row_bytes = source
    out = np.empty((max(0, stop - start), features.shape[1]), dtype=features.dtype)
    fd, close = _opened(file)
    try:
        _read_exactly(fd, memoryview(out.reshape(-1).view(np.uint8)), offset + start * row_bytes)
    finally:
        if close:
            os.close(fd)
    return out


def _read_exactly(fd: int, buffer: memoryview, position: int) -> None:
    while len(buffer):
        got = os.preadv(fd, [buffer], position)
        if got <= 0:
            raise OSError(f"the feature file ended early at byte {position}")
        buffer, position = buffer[got:], position + got
