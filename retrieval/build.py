"""Incremental, resumable index building from a folder of images.

Descriptors are kept in a cache inside the index folder (`.cache/`), as shard files written
atomically every `shard_size` images or `flush_seconds`. A rerun re-embeds only new or changed
files (by size and modification time), drops deleted ones, and an interrupted run resumes from
the last shard written. The index itself is replaced atomically at the end (`save_index`).
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retrieval.ann import build_ann
from retrieval.defaults import Recipe, approximate
from retrieval.diffusion import DiffusionSettings, build_graph
from retrieval.features import THUMBNAIL_SIDE, Embedded, ImageError, Pipeline, find_images, iter_features
from retrieval.index import recover_index_folder, save_index
from retrieval.previews import PREVIEW_MAX_IMAGES, PREVIEW_SIDE, build_previews
from retrieval.query import self_similarity
from retrieval.rerank import database_augmentation
from retrieval.whitening import apply_whitening, learn_whitening

CACHE_DIR = ".cache"
CACHE_VERSION = 1


class BuildError(RuntimeError):
    """The build could not produce an index; any previous index is left as it was."""


_OS_REMEDIES = {
    errno.ENOSPC: "the disk is full: free some space, or write the index elsewhere",
    errno.EDQUOT: "the disk quota is used up: free some space, or write the index elsewhere",
    errno.EROFS: "the folder is on a read-only file system: write the index elsewhere",
    errno.EACCES: "permission denied: write the index to a folder you may write to",
    errno.EPERM: "permission denied: write the index to a folder you may write to",
}


def os_message(error: OSError) -> str:
    """Returns one line that says what an OSError of a build means and what to do about it."""
    where = f" ({error.filename})" if getattr(error, "filename", None) else ""
    what = _OS_REMEDIES.get(error.errno)
    if what is None:
        return f"{error.strerror or error}{where}"
    return f"cannot write{where}: {what}"


@dataclass
class BuildReport:
    """What a build did."""

    count: int = 0
    embedded: int = 0
    reused: int = 0
    removed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class _Entry:
    size: int
    mtime: int
    vector: np.ndarray
    thumbnail: bytes


def image_id(relpath: str) -> str:
    """Returns the id of an image: its path under the image folder, '/'-separated, without extension."""
    return relpath.rsplit(".", 1)[0]


def build_index(
    images_dir,
    out_dir,
    network,
    pipeline: Pipeline,
    *,
    batch_size: int = 8,
    workers: int = 2,
    dtype: str = "float16",
    whiten: bool = False,
    whiten_shrinkage: float = 0.5,
    dba: int = 0,
    qe: int = 0,
    alpha: float = 3.0,
    ann: bool | None = None,
    diffusion: DiffusionSettings | None = None,
    shard_size: int = 256,
    flush_seconds: float = 30.0,
    thumbnail_side: int = THUMBNAIL_SIDE,
    preview_side: int | None = PREVIEW_SIDE,
    max_previews: int = PREVIEW_MAX_IMAGES,
    extra_meta: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> BuildReport:
    """Builds or updates the index of every image under `images_dir` into `out_dir`.

    Args:
        images_dir: folder searched recursively for jpg, jpeg, png, webp, bmp and tiff files.
        out_dir: the index folder (created, or updated in place atomically).
        network: a `retrieval.networks.Network`.
        pipeline: resizing and pooling.
        whiten: learn a PCA-whitening from the indexed descriptors and store it with the index.
        dba: database-side augmentation with this many neighbours (fewer on a tiny index), 0 for none.
        qe: alpha query expansion with the top `qe` results, recorded for the search engine.
        alpha: the similarity exponent of DBA and query expansion.
        ann: build the ANN structure (`retrieval.ann`) too; None builds it from
            `retrieval.defaults.DEFAULT.ann_rows` images up.
        preview_side: also store a JPEG preview of every image, this many pixels on its longer
            side (for the app's editor and match view); None stores none.
        max_previews: store previews only when the index has at most this many images.
        diffusion: build the database's kNN graph (k, gamma) and store it with these query-time
            settings for diffusion re-ranking; None for none.
        extra_meta: more metadata for index.json (source collection, evaluation...).
        progress: called as progress(done, total) after each image embedded in this run.
        log: called with one line per skipped file and per notable event.

    Returns:
        A `BuildReport`.

    Raises:
        BuildError: if no image at all could be indexed.
    """
    t0 = time.perf_counter()
    say = log or (lambda _msg: None)
    plan = plan_build(images_dir, out_dir, network, pipeline, thumbnail_side=thumbnail_side, log=say)
    previews_here = previews_in_pass(plan, preview_side, max_previews)
    stream = iter_features(
        network, [plan.files[rel] for rel in plan.todo], pipeline,
        batch_size=batch_size, workers=workers, thumbnail_side=thumbnail_side, preview_side=previews_here,
    )
    record_results(plan, ((plan.todo[item.position], item) for item in stream),
                   shard_size=shard_size, flush_seconds=flush_seconds, progress=progress, log=say)
    return assemble_index(plan, network, pipeline, dtype=dtype, whiten=whiten, whiten_shrinkage=whiten_shrinkage,
                          dba=dba, qe=qe, alpha=alpha, ann=ann, diffusion=diffusion, thumbnail_side=thumbnail_side,
                          preview_side=preview_side, max_previews=max_previews, workers=workers,
                          extra_meta=extra_meta, log=say, started=t0)


def previews_in_pass(plan: "BuildPlan", preview_side: int | None, max_previews: int) -> int | None:
    """Returns the preview side the decoding pass makes previews at, or None: every build engine asks here.

    Previews come out of the same decoding pass as the network inputs when the index will keep
    them. This side also sets how far a JPEG may be draft-decoded, so it decides the descriptors:
    every engine must pass the same one to `retrieval.features` (and a query, the index's own).
    """
    return preview_side if preview_side and len(plan.files) <= max_previews else None


@dataclass
class BuildPlan:
    """What a build has to do, from the folder and the cache: shared by every build engine.

    Attributes:
        files: relative path ('/'-separated) -> file, for every image under the folder.
        todo: the relative paths to embed (new or changed), sorted.
        entries: what the cache holds for the others (and, as shards are written, for these).
    """

    images_dir: Path
    out_dir: Path
    files: dict[str, Path]
    stats: dict[str, os.stat_result]
    todo: list[str]
    cache: _Cache
    entries: dict[str, _Entry]
    report: BuildReport
    previews: dict[str, bytes] = field(default_factory=dict)  # made while embedding, by relative path


def plan_build(images_dir, out_dir, network, pipeline: Pipeline, *, thumbnail_side: int = THUMBNAIL_SIDE,
               log: Callable[[str], None] | None = None) -> BuildPlan:
    """Returns the plan of a build: lists the images, loads the cache and finds what to embed."""
    say = log or (lambda _msg: None)
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    recover_index_folder(out_dir)
    files = {p.relative_to(images_dir).as_posix(): p for p in find_images(images_dir)}
    cache = _Cache(out_dir / CACHE_DIR, _cache_key(network, pipeline, thumbnail_side), say)
    entries = cache.load()

    report = BuildReport()
    stats = {rel: path.stat() for rel, path in files.items()}
    todo = [rel for rel in files if rel not in entries or (entries[rel].size, entries[rel].mtime) != _stamp(stats[rel])]
    report.removed = sum(1 for rel in entries if rel not in files)
    report.reused = len(files) - len(todo)
    for rel in [rel for rel in entries if rel not in files or rel in todo]:
        del entries[rel]
    return BuildPlan(images_dir, out_dir, files, stats, todo, cache, entries, report)


def record_results(plan: BuildPlan, results: Iterable[tuple[str, Embedded]], *, shard_size: int = 256,
                   flush_seconds: float = 30.0, progress: Callable[[int, int], None] | None = None,
                   log: Callable[[str], None] | None = None) -> None:
    """Stores (relative path, Embedded) results in cache shards as they come, and counts them in the report.

    Whatever finished before an interruption or a crash is written, for the next run to reuse.
    """
    say = log or (lambda _msg: None)
    report, fresh, last_flush, done = plan.report, {}, time.monotonic(), 0
    skipped_before = len(report.skipped)  # an earlier call's skips are not this call's
    try:
        for done, (rel, item) in enumerate(results, 1):
            if item.error:
                report.skipped.append((rel, item.error))
                say(f"skipped {rel}: {item.error}")
            else:
                size, mtime = _stamp(plan.stats[rel])
                fresh[rel] = _Entry(size, mtime, item.vector, item.thumbnail)
                if item.preview is not None:
                    plan.previews[rel] = item.preview
            if progress:
                progress(done, len(plan.todo))
            if len(fresh) >= shard_size or (fresh and time.monotonic() - last_flush > flush_seconds):
                plan.cache.write_shard(fresh)
                plan.entries.update(fresh)
                fresh, last_flush = {}, time.monotonic()
    finally:
        if fresh:
            plan.cache.write_shard(fresh)
            plan.entries.update(fresh)
    report.embedded += done - (len(report.skipped) - skipped_before)


def assemble_index(plan: BuildPlan, network, pipeline: Pipeline, *, dtype: str = "float16", whiten: bool = False,
                   whiten_shrinkage: float = 0.5, dba: int = 0, qe: int = 0, alpha: float = 3.0,
                   ann: bool | None = None, diffusion: DiffusionSettings | None = None,
                   thumbnail_side: int = THUMBNAIL_SIDE, preview_side: int | None = PREVIEW_SIDE,
                   max_previews: int = PREVIEW_MAX_IMAGES, workers: int = 2, extra_meta: dict | None = None,
                   log: Callable[[str], None] | None = None, started: float | None = None) -> BuildReport:
    """Writes the index folder from the cached descriptors (ids sorted by path) and returns the report.

    `network` needs only `name` and `weights`. See `build_index` for the other arguments.

    Raises:
        BuildError: if no image at all could be indexed.
    """
    started = time.perf_counter() if started is None else started  # without a start time: this call's
    say = log or (lambda _msg: None)
    report, entries = plan.report, plan.entries
    ids, vectors, thumbs, rels, seen = [], [], [], [], {}
    for rel in sorted(entries):
        iid = image_id(rel)
        if iid in seen:
            report.skipped.append((rel, f"same id as {seen[iid]}"))
            say(f"skipped {rel}: its id {iid!r} is taken by {seen[iid]}")
            continue
        seen[iid] = rel
        ids.append(iid)
        vectors.append(entries[rel].vector)
        thumbs.append(entries[rel].thumbnail)
        rels.append(rel)
    if not ids:
        raise BuildError(f"no image under {plan.images_dir} could be indexed ({len(report.skipped)} skipped)")
    plan.cache.compact(entries)

    features = np.stack(vectors).astype(np.float32)
    whitening = None
    if whiten:
        if len(features) < 2:
            raise BuildError("whitening needs at least two images")
        whitening = learn_whitening(features, shrinkage=whiten_shrinkage)
        features = apply_whitening(features, whitening)
    dba = min(dba, len(features) - 1)
    own = features
    if dba > 0:
        features = database_augmentation(features, k=dba, alpha=alpha)
    graph = None
    if diffusion is not None and len(features) > 1:
        # Built from the rows as stored (after rounding to dtype), so that a graph built again
        # from a loaded index is this one exactly.
        graph = build_graph(features.astype(dtype).astype(np.float32), k=diffusion.k, gamma=diffusion.gamma)
    recipe = Recipe(descriptor=pipeline, dba=dba, qe=qe, alpha=alpha, diffusion=diffusion if graph is not None else None)
    meta = {
        "network": network.name,
        "weights": network.weights,
        **recipe.to_meta(),
        "thumbnail_side": thumbnail_side,
        "preview_side": None,
        **(extra_meta or {}),
    }
    structure = None
    if approximate(len(features), ann):
        say(f"building the ANN structure over {len(features)} images")
        structure = build_ann(features.astype(dtype).astype(np.float32), log=say)  # the rows as stored
    previews = None
    if preview_side and len(ids) <= max_previews:
        try:
            previews = build_previews({rel: plan.files[rel] for rel in rels}, {rel: _stamp(plan.stats[rel]) for rel in rels},
                                      preview_side, plan.out_dir / CACHE_DIR / "previews.npz", workers=workers,
                                      made=plan.previews)
        except ImageError as e:
            raise BuildError(f"a preview could not be made ({e}); the files changed during the build?") from None
        meta["preview_side"] = preview_side
    save_index(plan.out_dir, features, ids, meta, thumbnails=thumbs, previews=previews, whitening=whitening, dtype=dtype,
               ann=structure, graph=graph, self_similarity=self_similarity(own, features, dtype))
    report.count = len(ids)
    report.seconds = time.perf_counter() - started
    return report


def _stamp(stat: os.stat_result) -> tuple[int, int]:
    return int(stat.st_size), int(stat.st_mtime_ns)


def _cache_key(network, pipeline: Pipeline, thumbnail_side: int) -> dict:
    return {
        "cache_version": CACHE_VERSION,
        "network": network.name,
        "weights": network.weights,
        "pipeline": pipeline.to_meta(),
        "thumbnail_side": thumbnail_side,
    }


class _Cache:
    """Shard files of raw descriptors; a later shard overrides an earlier one for the same file."""

    def __init__(self, folder: Path, key: dict, say: Callable[[str], None]):
        self.folder, self.key, self.say = folder, key, say

    def _shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.npz"))

    def load(self) -> dict[str, _Entry]:
        state = self.folder / "state.json"
        if state.is_file():
            try:
                same = json.loads(state.read_text()) == self.key
            except ValueError:
                same = False
            if not same:
                self.say("the cached descriptors were made with other settings; embedding everything again")
                for shard in self._shards():
                    shard.unlink()
        self.folder.mkdir(parents=True, exist_ok=True)
        for left in [*self.folder.glob(".*.tmp"), *self.folder.glob(".*.tmp.npz")]:
            left.unlink(missing_ok=True)  # what a killed build was writing
        _atomic_write(state, json.dumps(self.key, indent=2).encode())
        entries: dict[str, _Entry] = {}
        for shard in self._shards():
            try:
                with np.load(shard, allow_pickle=False) as z:
                    thumbs, offsets = z["thumbs"].tobytes(), z["offsets"]
                    for j, rel in enumerate(z["relpaths"].tolist()):
                        entries[rel] = _Entry(
                            int(z["sizes"][j]), int(z["mtimes"][j]), z["vectors"][j].copy(),
                            thumbs[offsets[j] : offsets[j + 1]],
                        )
            except (OSError, ValueError, KeyError) as e:
                self.say(f"ignoring unreadable cache file {shard.name} ({e}); its images will be embedded again")
                shard.unlink(missing_ok=True)
        return entries

    def write_shard(self, entries: dict[str, _Entry]) -> None:
        shards = self._shards()
        seq = int(shards[-1].stem.split("-")[1]) + 1 if shards else 1
        rels = sorted(entries)
        thumbs = [entries[r].thumbnail for r in rels]
        offsets = np.zeros(len(rels) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(t) for t in thumbs])
        tmp = self.folder / f".shard-{seq:06d}.tmp.npz"
        try:
            np.savez(
                tmp,
                relpaths=np.asarray(rels, dtype=str),
                sizes=np.asarray([entries[r].size for r in rels], dtype=np.int64),
                mtimes=np.asarray([entries[r].mtime for r in rels], dtype=np.int64),
                vectors=np.stack([entries[r].vector for r in rels]).astype(np.float32),
                thumbs=np.frombuffer(b"".join(thumbs), dtype=np.uint8),
                offsets=offsets,
            )
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.folder / f"shard-{seq:06d}.npz")
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk leaves no half shard behind
            raise

    def compact(self, entries: dict[str, _Entry]) -> None:
        """Rewrites the cache as one shard of exactly `entries`, when it holds more than that."""
        old = self._shards()
        if len(old) == 1 and self._count(old) == len(entries):
            return
        if entries:
            self.write_shard(entries)  # the newest shard wins, so a crash here loses nothing
        for shard in old:
            shard.unlink(missing_ok=True)

    @staticmethod
    def _count(shards: list[Path]) -> int:
        total = 0
        for shard in shards:
            with np.load(shard, allow_pickle=False) as z:
                total += len(z["relpaths"])
        return total


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
