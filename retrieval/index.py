"""An index is a folder that describes itself: descriptors, ids, thumbnails and index.json.

Layout:
    feature_list.npy        (n, d) float16 or float32 rows, L2-normalised (after whitening, if any)
    feature_id.npy          (n,) fixed-width unicode ids, loadable with allow_pickle=False
    thumbnails.bin          every image's JPEG thumbnail, concatenated
    thumbnails_offsets.npy  (n + 1,) int64 byte offsets into thumbnails.bin
    previews.bin, previews_offsets.npy   optional: larger JPEG previews, laid out as the thumbnails
    whitening_mean.npy, whitening_projection.npy   only when the index is whitened
    ann.faiss               only with an ANN structure: a FAISS index in FAISS's format (`retrieval.ann`)
    graph_indptr.npy, graph_indices.npy, graph_weights.npy   the diffusion graph (CSR), when built
    index.json              format version, network, weights, pipeline, dim, dtype, count,
                            whitening, versions, and the sha256 of every file above
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np

from retrieval.diffusion import Graph
from retrieval.features import Pipeline
from retrieval.rows import OpenFile, hold_file
from retrieval.search import as_rows
from retrieval.whitening import Whitening, apply_whitening

FORMAT_VERSION = 1
META_FILE = "index.json"
DATA_FILES = ("feature_list.npy", "feature_id.npy", "thumbnails.bin", "thumbnails_offsets.npy")
WHITENING_FILES = ("whitening_mean.npy", "whitening_projection.npy")
PREVIEW_FILES = ("previews.bin", "previews_offsets.npy")
GRAPH_FILES = ("graph_indptr.npy", "graph_indices.npy", "graph_weights.npy")
SELF_SIMILARITY_FILE = "self_similarity.npy"
INDEX_FILES = (META_FILE, *DATA_FILES)
ANN_FILE = "ann.faiss"
DTYPES = ("float16", "float32")
# Above this many matrix elements (128 MB as float32: 13,000 rows of 2,560) load_index maps the
# feature matrix from disk instead of widening it to float32 in memory; smaller indexes keep the
# faster in-memory float32 rows.
IN_MEMORY_ELEMENTS = 1 << 25
# Rows written or checked at once when a matrix is handled in blocks.
_BLOCK = 65536


class IndexFormatError(ValueError):
    """A folder that is not a usable index, with what is wrong and why."""


@dataclass
class Index:
    """A loaded index.

    Attributes:
        path: the folder it came from.
        features: (n, d) L2-normalised rows: float32 in memory, or for a large index the file's
            own float16/float32 rows memory-mapped read-only (`np.memmap`); None when loaded
            without them (`load_index(..., features=False)`: the rows live in Milvus).
        ids: (n,) unicode ids, row i describes ids[i].
        meta: the parsed index.json.
        whitening: applied to raw query descriptors before search, or None.
        ann: the index's ANN structure (`retrieval.ann.AnnIndex`), or None.
        graph: the database's diffusion graph (`retrieval.diffusion.Graph`), or None.
        self_similarity: (n,) float32, the cosine of each image's own descriptor and its stored
            row (below 1 where DBA mixed in neighbours): a query at that cosine is the image
            itself. None for an index saved without it.
    """

    path: Path
    features: np.ndarray
    ids: np.ndarray
    meta: dict
    whitening: Whitening | None = None
    _thumbnails: bytes = field(default=b"", repr=False)
    _offsets: np.ndarray | None = field(default=None, repr=False)
    _rows: dict = field(default_factory=dict, repr=False)
    ann: object = None
    _thumbnail_file: OpenFile | None = field(default=None, repr=False)
    _preview_offsets: np.ndarray | None = field(default=None, repr=False)
    graph: Graph | None = None
    _preview_file: OpenFile | None = field(default=None, repr=False)
    self_similarity: np.ndarray | None = None

    def __post_init__(self):
        self._rows = {str(i): r for r, i in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return self.features.shape[1] if self.features is not None else int(self.meta["dim"])

    @property
    def pipeline(self) -> Pipeline:
        return Pipeline.from_meta(self.meta["pipeline"])

    @property
    def recipe(self):
        """The `retrieval.defaults.Recipe` the index was built with, as index.json records it."""
        from retrieval.defaults import Recipe

        return Recipe.from_meta(self.meta)

    def __contains__(self, image_id) -> bool:
        return str(image_id) in self._rows

    def row_of(self, image_id: str) -> int:
        """Returns the row of `image_id`; raises KeyError naming it when it is not indexed."""
        try:
            return self._rows[str(image_id)]
        except KeyError:
            raise KeyError(f"image id {image_id!r} is not in this index") from None

    def thumbnail(self, image_id: str) -> bytes:
        """Returns the JPEG thumbnail bytes of `image_id`; b"" for an image without one (`--vectors`)."""
        row = self.row_of(image_id)
        start, stop = int(self._offsets[row]), int(self._offsets[row + 1])
        if self._thumbnail_file is None:
            return self._thumbnails[start:stop]
        return self._thumbnail_file.read(start, stop)  # read by offset: thumbnails.bin stays on disk

    @property
    def has_previews(self) -> bool:
        """Tells whether the index stores a larger preview of every image (index.json "preview_side")."""
        return self._preview_offsets is not None

    def preview(self, image_id: str) -> bytes:
        """Returns the JPEG preview bytes of `image_id`, read from previews.bin; the thumbnail when none is stored."""
        if self._preview_offsets is None:
            return self.thumbnail(image_id)
        row = self.row_of(image_id)
        start, stop = int(self._preview_offsets[row]), int(self._preview_offsets[row + 1])
        return self._preview_file.read(start, stop)

    def project(self, raw: np.ndarray) -> np.ndarray:
        """Returns query descriptors in the index's space: whitened if the index is, (m, d) float32."""
        return apply_whitening(raw, self.whitening) if self.whitening is not None else as_rows(raw)


def file_sha256(path: Path) -> str:
    """Returns the hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict:
    versions = {"python": platform.python_version()}
    for dist in ("numpy", "keras", "tensorflow-cpu", "tensorflow", "scikit-learn", "pillow"):
        try:
            versions[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            pass
    return versions


def save_index(
    out_dir,
    features: np.ndarray,
    ids,
    meta: dict,
    *,
    thumbnails: list[bytes] | None,
    previews: list[bytes] | None = None,
    whitening: Whitening | None = None,
    graph: Graph | None = None,
    dtype: str = "float16",
    keep: tuple[str, ...] = (".cache",),
    ann=None,
    self_similarity: np.ndarray | None = None,
) -> Path:
    """Writes an index folder atomically and returns its path.

    The new index is written beside `out_dir` and swapped in by renames, so a reader or a crash
    sees either the old index or the new one, never a mix. Entries named in `keep` (the build
    cache) move over from the old folder.

    Args:
        out_dir: the index folder to create or replace.
        features: (n, d) L2-normalised rows, already whitened if `whitening` is given; any float
            dtype, a memory map included: they are converted and written in blocks.
        ids: n unique image ids.
        meta: at least network, weights and pipeline (a dict from `Pipeline.to_meta`); anything
            else (source, evaluation) is stored as given.
        thumbnails: n JPEG byte strings, or None for an index without thumbnails (descriptors
            from elsewhere): every image then has an empty one, and the app a placeholder.
        previews: n larger JPEG byte strings, or None to store none.
        whitening: the whitening applied to `features`, stored for queries.
        graph: the diffusion graph of `features`, stored as its CSR arrays.
        dtype: "float16" (half the size) or "float32".
        ann: a `retrieval.ann.AnnIndex` over exactly these rows, saved as ann.faiss.
        self_similarity: (n,) cosine of each image's descriptor before DBA and its row as stored
            (see `Index.self_similarity`), or None.

    Raises:
        ValueError: on inconsistent inputs.
    """
    if not isinstance(features, np.ndarray) or features.ndim != 2:
        features = as_rows(features, name="features")
    ids = np.asarray([str(i) for i in ids])
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if thumbnails is None:
        thumbnails = [b""] * len(ids)
    if ann is not None and (len(ann) != len(features) or ann.dim != features.shape[1]):
        raise ValueError(f"the ANN index holds {len(ann)} rows of dimension {ann.dim}, not {features.shape}")
    if len(ids) != len(features) or len(thumbnails) != len(features):
        raise ValueError(f"{len(features)} rows, {len(ids)} ids and {len(thumbnails)} thumbnails must match")
    if previews is not None and len(previews) != len(features):
        raise ValueError(f"{len(features)} rows and {len(previews)} previews must match")
    if len(set(ids.tolist())) != len(ids):
        raise ValueError("image ids must be unique")
    for key in ("network", "weights", "pipeline"):
        if key not in meta:
            raise ValueError(f"index metadata needs {key!r}")
    if whitening is not None and whitening.dim_out != features.shape[1]:
        raise ValueError("features do not have the whitening's output dimension")
    if self_similarity is not None and np.shape(self_similarity) != (len(features),):
        raise ValueError(f"self_similarity has shape {np.shape(self_similarity)} for {len(features)} rows")
    if graph is not None and len(graph) != len(features):
        raise ValueError(f"the graph has {len(graph)} nodes for {len(features)} rows")
    Pipeline.from_meta(meta["pipeline"])  # refuse a pipeline we could not rebuild at load time

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Named with our pid: a later build removes the folder of a save that was killed (see `recover_index_folder`).
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.new-{os.getpid()}-", dir=out_dir.parent))
    try:
        _save_rows(tmp / "feature_list.npy", features, dtype)
        np.save(tmp / "feature_id.npy", ids.astype(f"<U{max(1, max((len(i) for i in ids), default=1))}"))
        _write_blobs(tmp, "thumbnails", thumbnails)
        files = list(DATA_FILES)
        if previews is not None:
            _write_blobs(tmp, "previews", previews)
            files += PREVIEW_FILES
        if whitening is not None:
            np.save(tmp / "whitening_mean.npy", whitening.mean.astype(np.float32))
            np.save(tmp / "whitening_projection.npy", whitening.projection.astype(np.float32))
            files += WHITENING_FILES
        if ann is not None:
            from retrieval.ann import save_ann

            save_ann(ann, tmp / ANN_FILE)
            files.append(ANN_FILE)
        if graph is not None:
            for name, array in zip(GRAPH_FILES, (graph.indptr, graph.indices, graph.weights)):
                np.save(tmp / name, array)
            files += GRAPH_FILES
        if self_similarity is not None:
            np.save(tmp / SELF_SIMILARITY_FILE, np.asarray(self_similarity, dtype=np.float32))
            files.append(SELF_SIMILARITY_FILE)
        full_meta = {
            **meta,
            "format_version": FORMAT_VERSION,
            "dim": int(features.shape[1]),
            "dtype": dtype,
            "count": int(len(ids)),
            "whitening": whitening.to_meta() if whitening is not None else None,
            "ann": ann.to_meta() if ann is not None else None,
            "thumbnails": any(len(t) for t in thumbnails),
            "graph": graph.to_meta() if graph is not None else None,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
            "files": {name: {"sha256": file_sha256(tmp / name), "bytes": (tmp / name).stat().st_size} for name in files},
        }
        (tmp / META_FILE).write_text(json.dumps(full_meta, indent=2, sort_keys=True) + "\n")
        _fsync_dir(tmp)
        _swap_in(tmp, out_dir, keep)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _save_rows(path: Path, features: np.ndarray, dtype: str) -> None:
    """Writes (n, d) rows as a .npy of `dtype`, block by block, refusing NaN or infinity."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=features.shape)
    for start in range(0, len(features), _BLOCK):
        block = np.asarray(features[start : start + _BLOCK], dtype=np.float32)
        if not np.isfinite(block).all():
            raise ValueError("features hold NaN or infinite values")
        with np.errstate(over="ignore"):  # an overflow is refused just below, with its reason
            stored = block.astype(dtype)
        if not np.isfinite(stored).all():
            raise ValueError(f"features hold values too large for {dtype} (L2-normalised rows are at most 1)")
        out[start : start + len(block)] = stored
    out.flush()
    del out


def _all_finite(path: Path) -> bool:
    """Tells whether a .npy matrix holds only finite values, read through a mapping of its own.

    The mapping is dropped afterwards, so the pages read do not stay in this process's memory.
    """
    rows = np.load(path, mmap_mode="r", allow_pickle=False)
    try:
        return all(np.isfinite(rows[s : s + _BLOCK]).all() for s in range(0, len(rows), _BLOCK))
    finally:
        del rows


def _write_blobs(folder: Path, stem: str, blobs: list[bytes]) -> None:
    """Writes `stem`.bin (the blobs one after another) and `stem`_offsets.npy ((n + 1,) int64 byte offsets)."""
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    with open(folder / f"{stem}.bin", "wb") as f:
        for b in blobs:
            f.write(b)
    np.save(folder / f"{stem}_offsets.npy", offsets)


def _fsync_dir(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def _swap_in(new: Path, out_dir: Path, keep: tuple[str, ...]) -> None:
    if not out_dir.exists():
        os.rename(new, out_dir)
        return
    if out_dir.is_file():
        raise ValueError(f"{out_dir} is a file, not an index folder")
    for name in keep:
        if (out_dir / name).exists():
            os.rename(out_dir / name, new / name)
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    os.rename(out_dir, old)
    os.rename(new, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def recover_index_folder(out_dir) -> None:
    """Finishes a swap that a crash interrupted between its two renames (see `save_index`), then
    removes what killed saves left beside the index: `.<name>.new-*` and `.<name>.old-*` folders
    whose process is gone."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        for new in sorted(out_dir.parent.glob(f".{out_dir.name}.new-*")):
            if (new / META_FILE).is_file() and not _owner_alive(new):
                os.rename(new, out_dir)
                break
        else:
            for old in sorted(out_dir.parent.glob(f".{out_dir.name}.old-*")):
                os.rename(old, out_dir)
                break
    if not out_dir.exists():
        return
    for left in [*out_dir.parent.glob(f".{out_dir.name}.new-*"), *out_dir.parent.glob(f".{out_dir.name}.old-*")]:
        if left.is_dir() and not _owner_alive(left):
            shutil.rmtree(left, ignore_errors=True)


def _owner_alive(folder: Path) -> bool:
    """Tells whether the process that named `folder` (".x.new-PID-..." or ".x.old-PID") still runs."""
    tail = folder.name.rsplit(".new-", 1)[-1] if ".new-" in folder.name else folder.name.rsplit(".old-", 1)[-1]
    head = tail.split("-", 1)[0]
    if not head.isdigit():
        return False  # named before pids were: by a process long gone
    pid = int(head)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, another user's
        return True
    return True


def update_meta(path, **entries) -> dict:
    """Sets top-level entries of an index folder's index.json (atomically: a reader sees the old file
    or the new one) and returns the new metadata. index.json records no checksum of itself, so the
    files' records stay valid.

    Raises:
        IndexFormatError: the folder is not an index.
    """
    path = Path(path)
    meta = {**read_meta(path), **entries}
    tmp = path / f".{META_FILE}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path / META_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    return meta


def read_meta(path) -> dict:
    """Returns the parsed index.json of an index folder.

    Raises:
        IndexFormatError: the folder or its metadata is missing or unreadable.
    """
    path = Path(path)
    if not path.is_dir():
        raise IndexFormatError(f"{path} is not an index folder (it does not exist or is not a folder)")
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise IndexFormatError(f"{path} is not an index: {META_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise IndexFormatError(f"{meta_path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise IndexFormatError(f"{meta_path} must hold a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{path}: unknown index format version {version!r}; this code reads version {FORMAT_VERSION}. "
            "Rebuild the index with this version of precompute.build_index."
        )
    missing = [k for k in ("network", "weights", "pipeline", "dim", "dtype", "count", "files") if k not in meta]
    if missing:
        raise IndexFormatError(f"{meta_path} lacks {', '.join(missing)}")
    return meta


def load_index(path, *, network: str | None = None, weights: str | None = None, verify: bool = True,
               features: bool = True) -> Index:
    """Returns the index in folder `path`, after checking that every part agrees with index.json.

    Args:
        path: the index folder.
        network: refuse an index built by another network than this one (e.g. "efficientnet-b7").
        weights: refuse an index built with other weights.
        verify: check each file's sha256 against index.json (catches truncated or altered files).
        features: False: without its rows (`Index.features` is None), nor their ANN structure and
            graph; the folder may lack them. For an index whose rows are searched elsewhere (Milvus).

    Raises:
        IndexFormatError: saying what does not match and why it matters.
    """
    path = Path(path)
    meta = read_meta(path)
    if network is not None and meta["network"] != network:
        raise IndexFormatError(
            f"{path} was built with network {meta['network']!r}, but queries would be embedded with {network!r}: "
            "descriptors of different networks cannot be compared. Use the index's network or rebuild the index."
        )
    if weights is not None and meta["weights"] != weights:
        raise IndexFormatError(f"{path} was built with weights {meta['weights']!r}, not {weights!r}")
    expected = [f for f in DATA_FILES if features or f != "feature_list.npy"]
    expected += list(WHITENING_FILES) if meta.get("whitening") else []
    expected += [ANN_FILE] if meta.get("ann") and features else []
    has_previews = "previews.bin" in meta["files"]
    expected += list(PREVIEW_FILES) if has_previews else []
    expected += list(GRAPH_FILES) if meta.get("graph") and features else []
    has_self = SELF_SIMILARITY_FILE in meta["files"]
    expected += [SELF_SIMILARITY_FILE] if has_self else []
    for name in expected:
        file = path / name
        if not file.is_file():
            raise IndexFormatError(f"{path} is incomplete: {name} is missing")
        record = meta["files"].get(name)
        if record is None:
            raise IndexFormatError(f"{META_FILE} in {path} has no record of {name}")
        if file.stat().st_size != record["bytes"]:
            raise IndexFormatError(
                f"{path / name} has {file.stat().st_size} bytes but {META_FILE} says {record['bytes']}: "
                "the file is truncated or from another build"
            )
        if verify and file_sha256(file) != record["sha256"]:
            raise IndexFormatError(f"{path / name} does not match its sha256 in {META_FILE}: the file is corrupt or altered")
    n, dim = meta["count"], meta["dim"]
    mapped = isinstance(n, int) and isinstance(dim, int) and n * dim > IN_MEMORY_ELEMENTS
    with_rows = features
    try:
        features = None
        if with_rows:
            features = np.load(path / "feature_list.npy", allow_pickle=False, mmap_mode="r" if mapped else None)
        if isinstance(features, np.memmap):
            hold_file(features)  # rows read by offset come from this file, as the mapping's do
        ids = np.load(path / "feature_id.npy", allow_pickle=False)
        offsets = np.load(path / "thumbnails_offsets.npy", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise IndexFormatError(f"{path}: an array file cannot be read ({e})") from None
    if with_rows and (features.ndim != 2 or features.shape != (n, dim)):
        raise IndexFormatError(f"{path}: feature_list.npy has shape {features.shape}, {META_FILE} says ({n}, {dim})")
    if with_rows and str(features.dtype) != meta["dtype"]:
        raise IndexFormatError(f"{path}: feature_list.npy is {features.dtype}, {META_FILE} says {meta['dtype']}")
    if ids.shape != (n,) or ids.dtype.kind != "U":
        raise IndexFormatError(f"{path}: feature_id.npy holds {ids.shape} {ids.dtype}, expected {n} unicode ids")
    if len(set(ids.tolist())) != n:
        raise IndexFormatError(f"{path}: feature_id.npy has duplicate ids")
    thumbs_bytes = (path / "thumbnails.bin").stat().st_size
    if offsets.shape != (n + 1,) or offsets[0] != 0 or offsets[-1] != thumbs_bytes or np.any(np.diff(offsets) < 0):
        raise IndexFormatError(f"{path}: thumbnails_offsets.npy does not describe thumbnails.bin for {n} images")
    preview_offsets = None
    if has_previews:
        try:
            preview_offsets = np.load(path / "previews_offsets.npy", allow_pickle=False)
            size = (path / "previews.bin").stat().st_size
        except (OSError, ValueError, EOFError) as e:
            raise IndexFormatError(f"{path}: the previews cannot be read ({e})") from None
        if (preview_offsets.shape != (n + 1,) or preview_offsets[0] != 0 or preview_offsets[-1] != size
                or np.any(np.diff(preview_offsets) < 0)):
            raise IndexFormatError(f"{path}: previews_offsets.npy does not describe previews.bin for {n} images")
    try:
        Pipeline.from_meta(meta["pipeline"])
    except (TypeError, ValueError) as e:
        raise IndexFormatError(f"{path}: the pipeline in {META_FILE} is not valid ({e})") from None
    whitening = None
    if meta.get("whitening"):
        try:
            mean = np.load(path / "whitening_mean.npy", allow_pickle=False)
            projection = np.load(path / "whitening_projection.npy", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise IndexFormatError(f"{path}: a whitening file cannot be read ({e})") from None
        if projection.ndim != 2 or projection.shape[1] != dim or mean.shape != (projection.shape[0],):
            raise IndexFormatError(f"{path}: whitening arrays {mean.shape}, {projection.shape} do not fit dim {dim}")
        if not (np.isfinite(mean).all() and np.isfinite(projection).all()):
            raise IndexFormatError(f"{path}: the whitening arrays hold NaN or infinite values")
        whitening = Whitening(mean.astype(np.float32), projection.astype(np.float32),
                              float(meta["whitening"].get("shrinkage", 0.0)))
    if with_rows and not mapped:
        features = np.ascontiguousarray(features, dtype=np.float32)
    if with_rows and not (_all_finite(path / "feature_list.npy") if mapped else np.isfinite(features).all()):
        raise IndexFormatError(f"{path}: feature_list.npy holds NaN or infinite values")
    ann = _load_ann(path, meta) if meta.get("ann") and with_rows else None
    # Small indexes keep their thumbnails in memory; a large one reads each by offset when asked.
    thumbs = (path / "thumbnails.bin").read_bytes() if not mapped else b""
    graph = _load_graph(path, meta) if meta.get("graph") and with_rows else None
    self_similarity = None
    if has_self:
        try:
            self_similarity = np.load(path / SELF_SIMILARITY_FILE, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise IndexFormatError(f"{path}: {SELF_SIMILARITY_FILE} cannot be read ({e})") from None
        if self_similarity.shape != (n,) or self_similarity.dtype != np.float32 or not np.isfinite(self_similarity).all():
            raise IndexFormatError(f"{path}: {SELF_SIMILARITY_FILE} is not {n} finite float32 values")
    # Files read later are opened now: after save_index replaces the folder, this index still reads
    # its own files (the old or the new index, never a mix).
    return Index(path, features, ids, meta, whitening, thumbs, offsets, ann=ann, graph=graph,
                 _thumbnail_file=OpenFile(path / "thumbnails.bin") if mapped else None,
                 _preview_offsets=preview_offsets,
                 _preview_file=OpenFile(path / "previews.bin") if has_previews else None,
                 self_similarity=self_similarity)


def _load_ann(path: Path, meta: dict):
    from retrieval.ann import load_ann

    try:
        ann = load_ann(path / ANN_FILE, meta["ann"])
    except (KeyError, TypeError, ValueError) as e:
        raise IndexFormatError(f"{path}: {ANN_FILE} cannot be used ({e})") from None
    if len(ann) != meta["count"] or ann.dim != meta["dim"]:
        raise IndexFormatError(f"{path}: {ANN_FILE} holds {len(ann)} rows of dimension {ann.dim}, "
                               f"{META_FILE} says {meta['count']} of {meta['dim']}")
    return ann


def _load_graph(path: Path, meta: dict) -> Graph:
    """Returns the stored diffusion graph, refusing one that is not a graph of this index's images."""
    record = meta["graph"]
    try:
        arrays = [np.load(path / name, allow_pickle=False) for name in GRAPH_FILES]
        graph = Graph(*arrays, k=int(record["k"]), gamma=float(record["gamma"]), mutual=bool(record["mutual"]),
                      knn=str(record["knn"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise IndexFormatError(f"{path}: the diffusion graph is not valid ({e})") from None
    if len(graph) != meta["count"]:
        raise IndexFormatError(f"{path}: the diffusion graph has {len(graph)} nodes, {META_FILE} says {meta['count']} images")
    return graph
