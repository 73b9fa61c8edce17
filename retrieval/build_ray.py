"""The index build as a Ray Data pipeline: the same index folder as `retrieval.build`, on a cluster.

    list files -> read headers, group by input shape -> read + decode (CPU tasks)
      -> embed (a pool of actors, each building the network once; a GPU each when there are GPUs)
      -> descriptor shards (the driver's cache folder) -> the index folder

The plan (what to embed, from the folder and the cache) and the assembly (ids, whitening,
DBA, index.json) are `retrieval.build`'s own, so both engines give the same index, resume from
the same shards and reuse the same cached descriptors. Only this module imports Ray, and
only when the engine is chosen.

The image files must be readable at the same path on every node (a shared file system); the
index folder and its cache are written by the driver alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from retrieval.build import BuildReport, assemble_index, plan_build, previews_in_pass, record_results
from retrieval.features import (
    THUMBNAIL_SIDE, Embedded, Pipeline, _decode, _draft_size, decode_error, descriptor_dim, embed_batch,
)
from retrieval.previews import PREVIEW_MAX_IMAGES, PREVIEW_SIDE
from retrieval.search import l2_normalize

# Images per decode task and per probe task: enough to amortise a task's start, few enough to spread.
DECODE_BATCH = 16
PROBE_BATCH = 512
# Sorting by input shape is a shuffle of the whole dataset: on 409 photos and 2 cores it cost more
# (about 5 s of 17) than the full one-shape batches it buys (benchmarks.ray_build); below this many
# files the actors group each batch by shape themselves (`Embedder`) and the order stays as listed.
SORT_FROM = 10_000
# A CPU actor's reservation: TensorFlow uses every core anyway, and a reservation unlike the decode
# tasks' keeps Ray from fusing decoding into the actor, where it would wait for the network.
ACTOR_CPUS = 0.5


def shape_key(path: str, pipeline: Pipeline) -> str:
    """Returns "WxH" of the network input at scale 1 for an image file, read from its header; "" if unreadable."""
    _, size = _draft_size(path, pipeline)
    if size is None:
        return ""
    w, h = pipeline.target_size(*size)
    return f"{w}x{h}"


def probe_shapes(batch: dict, pipeline: Pipeline) -> dict:
    """Ray task: adds each file's input shape key ("shape"), so that rows can be grouped by shape."""
    return {**batch, "shape": np.asarray([shape_key(p, pipeline) for p in batch["path"]])}


def decode_images(batch: dict, pipeline: Pipeline, thumbnail_side: int, preview_side: int | None = None) -> dict:
    """Ray task: reads and decodes a batch of files with the default engine's decoding and skipping.

    `preview_side` is the default engine's (`retrieval.build.previews_in_pass`): it decides how far
    a JPEG is draft-decoded, so the same value gives the same pixels, and the same descriptors.

    Returns the batch with "error" (empty when decoded), "thumb" and "preview" (JPEG bytes, b"" for
    none), and per scale i "pixels_i" ((h, w, 3) uint8, exactly the network input: its values are
    whole numbers) and "content_i" ((width, height)).
    """
    n_scales = len(pipeline.scales)
    errors, thumbs, previews = [], [], []
    pixels = [[] for _ in range(n_scales)]
    contents = [[] for _ in range(n_scales)]
    for path in batch["path"]:
        try:
            arrays, sizes, thumb, preview = _decode(str(path), pipeline, thumbnail_side, preview_side)
            error = ""
        except Exception as e:  # one bad file is reported, never stops the job
            arrays, sizes, thumb, preview = [np.zeros((1, 1, 3))] * n_scales, [(1, 1)] * n_scales, b"", b""
            error = decode_error(e)
        errors.append(error)
        thumbs.append(thumb or b"")
        previews.append(preview or b"")
        for i in range(n_scales):
            # The network input is a resized uint8 image: a quarter of float32's bytes on the way, and exact.
            pixels[i].append(arrays[i].astype(np.uint8))
            contents[i].append(sizes[i])
    out = {"rel": batch["rel"], "error": np.asarray(errors), "thumb": np.asarray(thumbs, dtype=object),
           "preview": np.asarray(previews, dtype=object)}
    for i in range(n_scales):
        out[f"pixels_{i}"] = pixels[i]
        out[f"content_{i}"] = np.asarray(contents[i], dtype=np.int64)
    return out


class Embedder:
    """Ray actor: builds the network once, then embeds batches of decoded images, one network call per shape."""

    def __init__(self, make_network: Callable, pipeline: Pipeline):
        self.network = make_network()
        self.pipeline = pipeline

    def __call__(self, batch: dict) -> dict:
        n = len(batch["rel"])
        ok = [i for i in range(n) if not batch["error"][i]]
        total = None
        for s in range(len(self.pipeline.scales)):
            images = [np.asarray(batch[f"pixels_{s}"][i]) for i in ok]
            part = self._embed_scale(images, batch[f"content_{s}"][ok])
            total = part if total is None else total + part
        vectors = np.zeros((n, descriptor_dim(self.network.channels, self.pipeline)), dtype=np.float32)
        if ok:
            # Multi-scale: the normalised mean of the normalised scales, as `iter_features` gives.
            vectors[ok] = l2_normalize(total / len(self.pipeline.scales))
        return {"rel": batch["rel"], "error": batch["error"], "thumb": batch["thumb"], "preview": batch["preview"],
                "vector": vectors}

    def _embed_scale(self, images: list[np.ndarray], contents: np.ndarray) -> np.ndarray:
        out = [None] * len(images)
        groups: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(image.shape, []).append(i)
        for rows in groups.values():
            batch = np.stack([images[i] for i in rows]).astype(np.float32)
            vectors = embed_batch(self.network, batch, self.pipeline, [tuple(contents[i]) for i in rows])
            for i, vec in zip(rows, vectors):
                out[i] = vec
        return np.stack(out) if out else np.zeros((0, 0), dtype=np.float32)


def connect(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Starts a local Ray (address None) or joins a cluster ("auto", "ray://host:10001", "host:6379").

    Returns True when this call started or joined Ray (and the caller should shut it down),
    False when Ray was already initialised in this process.
    """
    import ray

    if ray.is_initialized():
        return False
    if address is None:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    else:
        import retrieval

        # The cluster's nodes get this package from the driver; its requirements must be installed there.
        ray.init(address=address, runtime_env={"py_modules": [str(Path(retrieval.__file__).parent)]},
                 log_to_driver=False)
    return True


def plan_actors(actors: int | None = None) -> tuple[int, float]:
    """Returns (number of embedding actors, GPUs per actor) for the cluster Ray is connected to.

    One actor per GPU when the cluster has GPUs; without, `actors` or one per 8 CPUs (at least one).
    """
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return actors or gpus, 1.0
    return actors or max(1, int(resources.get("CPU", 1)) // 8), 0.0


def embed_with_ray(rels: list[str], paths: list[str], make_network: Callable, pipeline: Pipeline, *,
                   batch_size: int = 32, thumbnail_side: int = THUMBNAIL_SIDE, preview_side: int | None = None,
                   actors: int | None = None) -> Iterator[tuple[str, Embedded]]:
    """Yields (relative path, Embedded) for every file, in completion order, embedded on the Ray cluster.

    Ray must be initialised (`connect`). Results stream back as they finish: the driver holds
    one batch of descriptors at a time, never the images.
    """
    import ray.data

    if not rels:
        return
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the caller shows one bar, in images per second
    n_actors, gpus = plan_actors(actors)
    blocks = max(1, min(len(rels) // PROBE_BATCH, 4096))
    ds = ray.data.from_items([{"rel": r, "path": p} for r, p in zip(rels, paths)], override_num_blocks=blocks)
    ds = ds.map_batches(probe_shapes, fn_kwargs={"pipeline": pipeline}, batch_size=PROBE_BATCH,
                        batch_format="numpy")
    if len(rels) >= SORT_FROM:
        # Files of one input shape next to each other: the actors' batches are then one shape, and full.
        ds = ds.sort("shape")
    ds = ds.map_batches(decode_images, fn_kwargs={"pipeline": pipeline, "thumbnail_side": thumbnail_side,
                                                  "preview_side": preview_side},
                        batch_size=DECODE_BATCH, batch_format="numpy", num_cpus=1)
    ds = ds.map_batches(Embedder, fn_constructor_kwargs={"make_network": make_network, "pipeline": pipeline},
                        batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=n_actors),
                        num_gpus=gpus or None, num_cpus=1 if gpus else ACTOR_CPUS)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for rel, error, thumb, preview, vector in zip(batch["rel"], batch["error"], batch["thumb"], batch["preview"],
                                                      batch["vector"]):
            yield str(rel), Embedded(0, vector=None if error else np.asarray(vector, dtype=np.float32),
                                     error=str(error) or None, thumbnail=bytes(thumb) or None,
                                     preview=bytes(preview) or None)


def build_index_ray(
    images_dir,
    out_dir,
    make_network: Callable,
    pipeline: Pipeline,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    actors: int | None = None,
    batch_size: int = 32,
    shard_size: int = 256,
    flush_seconds: float = 30.0,
    thumbnail_side: int = THUMBNAIL_SIDE,
    preview_side: int | None = PREVIEW_SIDE,
    max_previews: int = PREVIEW_MAX_IMAGES,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
    **assemble,
) -> BuildReport:
    """Builds or updates the index of every image under `images_dir` into `out_dir`, embedding on Ray.

    The same index as `retrieval.build.build_index` for the same images, network and pipeline:
    same ids and order, the same descriptors (up to float rounding), the same cache, so either
    engine resumes or updates what the other built.

    Args:
        make_network: a picklable callable returning the `retrieval.networks.Network`; each actor
            calls it once, and the driver once for the network's name and weights.
        address: None starts a local Ray; "auto" or "ray://host:port" joins a running cluster.
        num_cpus: CPUs of a local Ray (default: all).
        actors: embedding actors; default one per GPU, or one per 8 CPUs without GPUs.
        batch_size: images per network call.
        preview_side, max_previews: as `build_index` takes them; they also set the JPEG draft size
            of the decoding, as in the default engine.
        assemble: dtype, whiten, whiten_shrinkage, dba, qe, alpha, extra_meta, as `build_index` takes them.

    Returns the `BuildReport`; raises `BuildError` when no image at all could be indexed.
    """
    t0 = time.perf_counter()
    say = log or (lambda _msg: None)
    network = make_network()  # the driver's copy names the network in the cache and index.json
    plan = plan_build(images_dir, out_dir, network, pipeline, thumbnail_side=thumbnail_side, log=say)
    started = connect(address, num_cpus=num_cpus) if plan.todo else False
    try:
        stream = embed_with_ray(plan.todo, [str(plan.files[r]) for r in plan.todo], make_network, pipeline,
                                batch_size=batch_size, thumbnail_side=thumbnail_side,
                                preview_side=previews_in_pass(plan, preview_side, max_previews), actors=actors)
        record_results(plan, stream, shard_size=shard_size, flush_seconds=flush_seconds, progress=progress, log=say)
    finally:
        if started:
            import ray

            ray.shutdown()
    return assemble_index(plan, network, pipeline, thumbnail_side=thumbnail_side, preview_side=preview_side,
                          max_previews=max_previews, log=say, started=t0, **assemble)
