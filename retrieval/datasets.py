"""Landmark retrieval benchmarks in their public layouts.

Revisited Oxford and Paris (``roxford5k``, ``rparis6k``, Radenović et al.
2018), revisitop layout::

    <root>/<name>/gnd_<name>.pkl      imlist, qimlist, gnd[i] = {bbx, easy, hard, junk}
    <root>/<name>/jpg/<image>.jpg

The original Oxford5k and Paris6k (``oxford5k``, ``paris6k``, Philbin et al.),
ground truth ``ok`` (good + ok) and ``junk`` per query, from the first of:

    <root>/<name>/gnd_<name>.pkl      cnnimageretrieval layout: gnd[i] = {bbx, ok, junk}
    <root>/<name>/gnd_<name>.mat      MATLAB, 1-based indices: imlist or feature_name,
                                      qidx or query_list, gnd(i) = {ok, junk, bbx}
    <root>/<name>/gt/*_query.txt      the original text files (also read straight
                                      from <root>/<name>/): <query>_query.txt holds
                                      "oxc1_<image> x0 y0 x1 y1"; <query>_good.txt,
                                      _ok.txt, _junk.txt list image names

Queries are cropped to their box (the standard protocol) unless
``<root>/<name>/query_crops/<query image>.jpg`` exists, which is then the
query already cropped.

Partial datasets: when only some images are on disk, the dataset is what is
there. The database is the ground-truth images present; the queries are those
with an image or a crop present and at least one positive present (easy or
hard for the revisited datasets, ok for the classic ones); the ground truth is
restricted to, and re-indexed into, the database present. ``total_db`` and
``total_queries`` keep the full counts. A complete dataset loads unchanged.

Ground-truth pickles are read with an unpickler that refuses every global:
the official files hold only dicts, lists, strings and numbers, so nothing in
them needs a class or a function, and a file that asks for one is refused.
"""

import http.client
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

REVISITED = ("roxford5k", "rparis6k")
CLASSIC = ("oxford5k", "paris6k")


class DatasetError(ValueError):
    """A benchmark's files are malformed, unsafe or unusable."""


class DownloadError(RuntimeError):
    """A benchmark file could not be downloaded."""


@dataclass
class Dataset:
    """A retrieval benchmark as present on disk.

    Attributes:
        name: dataset name, e.g. ``rparis6k``.
        root: folder holding ``<name>/``.
        kind: ``revisited`` (gnd keys easy/hard/junk) or ``classic`` (ok/junk).
        db_ids: database image names present, in ground-truth order.
        query_ids: query image names used.
        query_boxes: per query, (x0, y0, x1, y1) in pixels of the full image,
            or None when the query is the whole image.
        gnd: per query, int64 index arrays into ``db_ids``: ``easy``, ``hard``,
            ``junk`` (revisited) or ``ok``, ``junk`` (classic).
        total_db: database size of the full dataset.
        total_queries: number of queries of the full dataset.
        images_dir: folder of ``<image>.jpg`` files.
        crops_dir: folder of ready-cropped ``<query image>.jpg`` files.
    """

    name: str
    root: Path
    kind: str
    db_ids: list[str]
    query_ids: list[str]
    query_boxes: list[tuple[float, float, float, float] | None]
    gnd: list[dict[str, np.ndarray]]
    total_db: int
    total_queries: int
    images_dir: Path
    crops_dir: Path = field(repr=False)

    @property
    def partial(self) -> bool:
        """True when images or queries of the full dataset are missing."""
        return len(self.db_ids) < self.total_db or len(self.query_ids) < self.total_queries

    def summary(self) -> str:
        """Returns a one-line description with present and full counts."""
        text = (
            f"{self.name} ({self.kind}): {len(self.db_ids)} of {self.total_db} database images, "
            f"{len(self.query_ids)} of {self.total_queries} queries"
        )
        return text + (" (partial)" if self.partial else "")

    def image_path(self, db_id: str) -> Path:
        """Returns the path of a database (or query) image by name."""
        return self.images_dir / f"{db_id}.jpg"

    def query_image(self, i: int) -> Image.Image:
        """Returns query ``i`` as an RGB image, cropped to its box.

        The ready-made crop in ``crops_dir`` is used when it exists; otherwise
        the full image is cropped to ``query_boxes[i]`` (rounded to pixels and
        clipped to the image).

        Raises:
            FileNotFoundError: if neither the crop nor the image exists.
            DatasetError: if the box lies outside the image.
        """
        query = self.query_ids[i]
        crop = self.crops_dir / f"{query}.jpg"
        if crop.is_file():
            return _open_rgb(crop)
        image = _open_rgb(self.image_path(query))
        box = self.query_boxes[i]
        if box is None:
            return image
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, image.width), min(y1, image.height)
        if x1 <= x0 or y1 <= y0:
            raise DatasetError(
                f"box {box} of query {query} lies outside its {image.width}x{image.height} image"
            )
        return image.crop((x0, y0, x1, y1))


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


# ---------------------------------------------------------------- ground truth


class _RawGnd(NamedTuple):
    kind: str
    imlist: list[str]
    qimlist: list[str]
    # per query: 0-based int64 arrays under easy/hard/junk or ok/junk
    gnd: list[dict[str, np.ndarray]]
    boxes: list[tuple[float, float, float, float] | None]


class _RefusingUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise DatasetError(
            f"refusing to load {module}.{name} from a ground-truth pickle: "
            "ground truth holds only plain containers, and a pickle naming a "
            "global can run arbitrary code"
        )


def load_pickle(path) -> object:
    """Returns the content of a pickle that holds only plain Python values.

    Dicts, lists, tuples, strings, bytes, numbers, booleans and None load;
    any class or function reference is refused before anything runs.

    Raises:
        DatasetError: if the file names a global or is not a valid pickle.
    """
    with open(path, "rb") as f:
        try:
            return _RefusingUnpickler(f).load()
        except DatasetError as error:
            raise DatasetError(f"{path}: {error}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError) as error:
            raise DatasetError(f"{path} is not a valid ground-truth pickle: {error}") from error


def _box(values) -> tuple[float, float, float, float] | None:
    if values is None:
        return None
    flat = np.asarray(values, dtype=np.float64).ravel()
    if flat.size == 0:
        return None
    if flat.size != 4:
        raise DatasetError(f"a query box needs 4 numbers (x0, y0, x1, y1), got {flat.tolist()}")
    return tuple(float(v) for v in flat)


def _indices(values, n_db: int, where: str, *, offset: int = 0) -> np.ndarray:
    try:
        idx = np.asarray(values, dtype=np.int64).ravel() - offset
    except (TypeError, ValueError) as error:
        raise DatasetError(f"{where} is not a list of image indices") from error
    if idx.size and (idx.min() < 0 or idx.max() >= n_db):
        raise DatasetError(f"{where} has indices outside the {n_db} database images")
    return idx


def _read_pkl(path: Path) -> _RawGnd:
    data = load_pickle(path)
    if not isinstance(data, dict) or not {"imlist", "qimlist", "gnd"} <= set(data):
        raise DatasetError(f"{path} must be a dict with imlist, qimlist and gnd")
    imlist, qimlist, entries = data["imlist"], data["qimlist"], data["gnd"]
    if not all(isinstance(x, list) for x in (imlist, qimlist, entries)) or len(entries) != len(qimlist):
        raise DatasetError(f"{path}: imlist, qimlist and gnd must be lists, one gnd entry per query")
    if not entries or not all(isinstance(e, dict) for e in entries):
        raise DatasetError(f"{path}: gnd must be a non-empty list of dicts")
    kind, keys = ("revisited", ("easy", "hard", "junk")) if "easy" in entries[0] else ("classic", ("ok", "junk"))
    gnd, boxes = [], []
    for i, entry in enumerate(entries):
        missing = [k for k in keys if k not in entry]
        if missing:
            raise DatasetError(f"{path}: gnd[{i}] lacks {missing}")
        gnd.append({k: _indices(entry[k], len(imlist), f"{path}: gnd[{i}][{k!r}]") for k in keys})
        boxes.append(_box(entry.get("bbx")))
    return _RawGnd(kind, [str(x) for x in imlist], [str(x) for x in qimlist], gnd, boxes)


def _mat_strings(cells) -> list[str]:
    return [str(np.asarray(c).ravel()[0]) if np.asarray(c).size else "" for c in np.asarray(cells).ravel()]


def _read_mat(path: Path) -> _RawGnd:
    try:
        import scipy.io
    except ImportError as error:  # pragma: no cover - scipy is a requirement
        raise DatasetError(f"reading {path} needs scipy (pip install scipy)") from error
    try:
        mat = scipy.io.loadmat(path)
    except (NotImplementedError, ValueError, TypeError, OSError) as error:
        raise DatasetError(f"{path} is not a readable MATLAB v5 file (save it with -v7): {error}") from error
    names_key = "imlist" if "imlist" in mat else "feature_name"
    if names_key not in mat or "gnd" not in mat:
        raise DatasetError(f"{path} must hold gnd and imlist (or feature_name)")
    imlist = _mat_strings(mat[names_key])
    if "qimlist" in mat:
        qimlist = _mat_strings(mat["qimlist"])
    elif "query_list" in mat:
        qimlist = _mat_strings(np.asarray(mat["query_list"], dtype=object)[:, 0])
    elif "qidx" in mat:
        qidx = _indices(mat["qidx"], len(imlist), f"{path}: qidx", offset=1)
        qimlist = [imlist[i] for i in qidx]
    else:
        raise DatasetError(f"{path} must hold qimlist, query_list or qidx")
    entries = np.asarray(mat["gnd"]).ravel()
    if len(entries) != len(qimlist) or entries.dtype.names is None:
        raise DatasetError(f"{path}: gnd must be a struct array with one entry per query")
    missing = [k for k in ("ok", "junk") if k not in entries.dtype.names]
    if missing:
        raise DatasetError(f"{path}: gnd lacks {missing}")
    gnd = [
        {k: _indices(e[k], len(imlist), f"{path}: gnd({i + 1}).{k}", offset=1) for k in ("ok", "junk")}
        for i, e in enumerate(entries)
    ]
    boxes = [_box(e["bbx"]) if "bbx" in entries.dtype.names else None for e in entries]
    return _RawGnd("classic", imlist, qimlist, gnd, boxes)


def _image_name(token: str) -> str:
    token = token.strip()
    if token.startswith("oxc1_"):
        token = token[len("oxc1_") :]
    return token[: -len(".jpg")] if token.endswith(".jpg") else token


def _read_name_list(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"missing ground-truth file {path}")
    return [_image_name(line) for line in path.read_text().splitlines() if line.strip()]


def _read_text(query_files: list[Path], image_names: set[str]) -> _RawGnd:
    queries = []
    for query_file in query_files:
        label = query_file.name[: -len("_query.txt")]
        fields = query_file.read_text().split()
        if len(fields) != 5:
            raise DatasetError(f"{query_file} must hold '<image> x0 y0 x1 y1', got {fields}")
        try:
            box = _box([float(v) for v in fields[1:]])
        except ValueError as error:
            raise DatasetError(f"{query_file}: box is not numeric: {fields[1:]}") from error
        lists = {part: _read_name_list(query_file.with_name(f"{label}_{part}.txt")) for part in ("good", "ok", "junk")}
        queries.append((_image_name(fields[0]), box, lists))
    # The text layout has no image list: the database is every image on disk
    # plus every image the ground truth names.
    universe = set(image_names)
    for image, _, lists in queries:
        universe.add(image)
        for names in lists.values():
            universe.update(names)
    imlist = sorted(universe)
    row = {name: i for i, name in enumerate(imlist)}
    gnd = [
        {
            "ok": np.array([row[n] for n in lists["good"] + lists["ok"]], dtype=np.int64),
            "junk": np.array([row[n] for n in lists["junk"]], dtype=np.int64),
        }
        for _, _, lists in queries
    ]
    return _RawGnd("classic", imlist, [q[0] for q in queries], gnd, [q[1] for q in queries])


def _jpg_names(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {entry.name[: -len(".jpg")] for entry in os.scandir(folder) if entry.name.endswith(".jpg")}


def _read_ground_truth(dataset_dir: Path, name: str, images: set[str]) -> _RawGnd:
    pkl, mat = dataset_dir / f"gnd_{name}.pkl", dataset_dir / f"gnd_{name}.mat"
    if pkl.is_file():
        return _read_pkl(pkl)
    if mat.is_file():
        return _read_mat(mat)
    for folder in (dataset_dir / "gt", dataset_dir):
        query_files = sorted(folder.glob("*_query.txt"))
        if query_files:
            return _read_text(query_files, images)
    raise FileNotFoundError(
        f"no ground truth for {name}: looked for {pkl}, {mat} and *_query.txt in {dataset_dir / 'gt'} "
        f"or {dataset_dir}"
    )


def _restrict(raw: _RawGnd, present: set[str], crops: set[str]) -> tuple[list[int], list[int], list[dict]]:
    """Returns the present database rows, the usable queries and their re-indexed gnd."""
    db_rows = [i for i, n in enumerate(raw.imlist) if n in present]
    new_row = np.full(len(raw.imlist), -1, dtype=np.int64)
    new_row[db_rows] = np.arange(len(db_rows))
    positive_keys = ("easy", "hard") if raw.kind == "revisited" else ("ok",)
    queries, gnd = [], []
    for q, (query, entry) in enumerate(zip(raw.qimlist, raw.gnd)):
        if query not in present and query not in crops:
            continue
        mapped = {}
        for key, idx in entry.items():
            rows = new_row[idx]
            mapped[key] = rows[rows >= 0]
        if sum(len(mapped[k]) for k in positive_keys) == 0:
            continue
        queries.append(q)
        gnd.append(mapped)
    return db_rows, queries, gnd


def load_dataset(name: str, root, *, images_dir=None, crops_dir=None) -> Dataset:
    """Returns a benchmark as present on disk (see the module docstring).

    Args:
        name: dataset folder and ground-truth name: ``roxford5k``,
            ``rparis6k``, ``oxford5k``, ``paris6k`` (or any folder in one of
            these layouts).
        root: folder that holds ``<name>/``.
        images_dir: folder of ``<image>.jpg`` files, instead of
            ``<root>/<name>/jpg``. Paris6k and RParis6k (and Oxford5k and
            ROxford5k) share image names, so the classic dataset can use the
            revisited one's images: ``images_dir=<root>/rparis6k/jpg``.
        crops_dir: folder of ready-cropped queries, instead of
            ``<root>/<name>/query_crops``. The classic and revisited query
            boxes are the same, so their crops are interchangeable too.

    Returns:
        The dataset; ``partial`` tells whether images or queries are missing.

    Raises:
        FileNotFoundError: if the ground truth is missing, or no image of it
            is present.
        DatasetError: if the ground truth is malformed or unsafe, or no query
            has its image and a positive present.
    """
    root = Path(root)
    dataset_dir = root / name
    images_dir = Path(images_dir) if images_dir is not None else dataset_dir / "jpg"
    crops_dir = Path(crops_dir) if crops_dir is not None else dataset_dir / "query_crops"
    images = _jpg_names(images_dir)
    raw = _read_ground_truth(dataset_dir, name, images)
    db_rows, queries, gnd = _restrict(raw, images, _jpg_names(crops_dir))
    if not db_rows:
        raise FileNotFoundError(f"none of the {len(raw.imlist)} database images of {name} is in {images_dir}")
    if not queries:
        raise DatasetError(
            f"no query of {name} has its image (in {images_dir}) or crop (in {crops_dir}) "
            "and a positive image present"
        )
    return Dataset(
        name=name,
        root=root,
        kind=raw.kind,
        db_ids=[raw.imlist[i] for i in db_rows],
        query_ids=[raw.qimlist[q] for q in queries],
        query_boxes=[raw.boxes[q] for q in queries],
        gnd=gnd,
        total_db=len(raw.imlist),
        total_queries=len(raw.qimlist),
        images_dir=images_dir,
        crops_dir=crops_dir,
    )


# ------------------------------------------------------------------- download


class Source(NamedTuple):
    """One file to download: ``kind`` says where it goes under ``<root>/<name>/``.

    ``file``: saved as is (a ground-truth pickle); ``images``: a tar archive
    whose ``.jpg`` files are extracted flat into ``jpg/``; ``gt``: a tar
    archive whose ``.txt`` files are extracted flat into ``gt/``.
    """

    url: str
    kind: str


_REVISITOP = "http://cmp.felk.cvut.cz/revisitop/data/datasets"
_OXFORD = "http://www.robots.ox.ac.uk/~vgg/data/oxbuildings"
_PARIS = "http://www.robots.ox.ac.uk/~vgg/data/parisbuildings"

# Ground truth first: it is small, so an unreachable server shows at once.
DOWNLOADS: dict[str, tuple[Source, ...]] = {
    "roxford5k": (
        Source(f"{_REVISITOP}/roxford5k/gnd_roxford5k.pkl", "file"),
        Source(f"{_OXFORD}/oxbuild_images.tgz", "images"),
    ),
    "rparis6k": (
        Source(f"{_REVISITOP}/rparis6k/gnd_rparis6k.pkl", "file"),
        Source(f"{_PARIS}/paris_1.tgz", "images"),
        Source(f"{_PARIS}/paris_2.tgz", "images"),
    ),
    "oxford5k": (
        Source(f"{_OXFORD}/gt_files_170407.tgz", "gt"),
        Source(f"{_OXFORD}/oxbuild_images.tgz", "images"),
    ),
    "paris6k": (
        Source(f"{_PARIS}/paris_120310.tgz", "gt"),
        Source(f"{_PARIS}/paris_1.tgz", "images"),
        Source(f"{_PARIS}/paris_2.tgz", "images"),
    ),
}

_ARCHIVE_TARGETS = {"images": ("jpg", ".jpg"), "gt": ("gt", ".txt")}


def _fetch(url: str, target: Path, timeout: float) -> None:
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise DownloadError(f"refusing to download {url}: only http and https URLs are fetched")
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        partial.unlink(missing_ok=True)
        if isinstance(error, urllib.error.HTTPError):
            reason = f"HTTP {error.code} {error.reason}"
        else:
            reason = getattr(error, "reason", None) or error
        raise DownloadError(
            f"could not download {url} (timeout {timeout} s): {reason}. "
            f"Fetch it by hand and put it under {target.parent}."
        ) from error
    partial.replace(target)


def _extract_flat(archive: Path, folder: Path, suffix: str) -> int:
    """Extracts the regular ``suffix`` files of a tar archive into one folder."""
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                # Only the base name is used: members cannot escape the folder,
                # and links are never followed or created.
                name = os.path.basename(member.name)
                if not member.isfile() or not name.endswith(suffix) or name.startswith("."):
                    continue
                with tar.extractfile(member) as src, open(folder / name, "wb") as out:
                    shutil.copyfileobj(src, out)
                count += 1
    except (tarfile.TarError, EOFError) as error:
        raise DownloadError(f"{archive} is not a valid tar archive: {error}") from error
    return count


def download_dataset(name: str, root, *, timeout: float = 10.0, sources=None) -> Path:
    """Downloads a benchmark into ``<root>/<name>/`` in the layout ``load_dataset`` reads.

    Files already downloaded are skipped, so an interrupted download can be
    resumed by calling again. Only plain files are taken from archives, by
    base name.

    Args:
        name: ``roxford5k``, ``rparis6k``, ``oxford5k`` or ``paris6k``.
        root: folder that will hold ``<name>/``.
        timeout: seconds to wait on each connection and read.
        sources: ``Source`` items to fetch instead of ``DOWNLOADS[name]``
            (a mirror).

    Returns:
        The dataset folder ``<root>/<name>``.

    Raises:
        ValueError: on an unknown name without ``sources``.
        DownloadError: when a file cannot be fetched or unpacked; the message
            names the URL and the folder to put it in by hand.
    """
    if sources is None:
        if name not in DOWNLOADS:
            raise ValueError(f"no download known for {name!r}; known: {sorted(DOWNLOADS)}")
        sources = DOWNLOADS[name]
    dataset_dir = Path(root) / name
    dataset_dir.mkdir(parents=True, exist_ok=True)
    for source in sources:
        source = Source(*source)
        base = Path(urllib.parse.urlsplit(source.url).path).name
        if not base:
            raise DownloadError(f"cannot tell a file name from {source.url}")
        if source.kind == "file":
            target = dataset_dir / base
            if not target.exists():
                _fetch(source.url, target, timeout)
            continue
        if source.kind not in _ARCHIVE_TARGETS:
            raise ValueError(f"unknown source kind {source.kind!r}; expected file, images or gt")
        done = dataset_dir / f".{base}.done"
        if done.exists():
            continue
        subdir, suffix = _ARCHIVE_TARGETS[source.kind]
        with tempfile.TemporaryDirectory(dir=dataset_dir) as tmp:
            archive = Path(tmp) / base
            _fetch(source.url, archive, timeout)
            _extract_flat(archive, dataset_dir / subdir, suffix)
        done.touch()
    return dataset_dir
