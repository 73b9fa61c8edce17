"""CPU inference runtimes for a Keras network: the same weights, converted once and cached.

Keras stays the definition of every network (`retrieval.networks` builds and checks it); a
runtime here runs the same graph faster on a CPU. Only `retrieval.networks` calls this module.

- ``openvino``: the Keras graph converted by OpenVINO into its IR (``model.xml`` + ``model.bin``,
  float32 weights), with dynamic batch, height and width, so one compiled model serves every
  aspect-preserved input size. Compiled with float32 inference precision unless ``bfloat16``
  is asked for (OpenVINO would otherwise pick bfloat16 by itself on CPUs with AMX or AVX512-BF16).

A conversion is cached in ``<cache_dir>/<network>-<key>/``; the key covers the network's name,
a sha256 of its architecture (Keras' JSON config) and of its weight values, and the runtime's
version, so new weights or a new OpenVINO convert again and a second start reads the IR.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["PRECISIONS", "RuntimeUnavailable", "conversion_key", "openvino_infer"]

PRECISIONS = ("float32", "bfloat16")
_OV_PRECISION = {"float32": "f32", "bfloat16": "bf16"}
_KEY_FILE = "key.json"


class RuntimeUnavailable(RuntimeError):
    """A runtime cannot be loaded here: its package is missing, or it cannot convert the network."""


def conversion_key(name: str, model, runtime: str, runtime_version: str) -> dict:
    """Returns what decides a conversion: network name, architecture, weight values, runtime version.

    Args:
        name: the network's name.
        model: the Keras model; its JSON config and every weight's bytes are hashed.
        runtime: the runtime's name.
        runtime_version: the runtime package's version.
    """
    weights = hashlib.sha256()
    for value in model.get_weights():
        value = np.ascontiguousarray(value)
        weights.update(f"{value.dtype.str}{value.shape}".encode())
        weights.update(value.data)
    architecture = _architecture_digest(model)
    return {"network": name, "architecture_sha256": architecture, "weights_sha256": weights.hexdigest(),
            "runtime": runtime, "runtime_version": runtime_version}


def _architecture_digest(model) -> str:
    """sha256 of the model's config with layer names replaced by their positions.

    Keras numbers unnamed layers per process ("re_lu_35"), so the same network built twice
    would otherwise get two keys.
    """
    config = model.get_config()
    names = {layer["name"]: f"#{i}" for i, layer in enumerate(config.get("layers", []))}

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [strip(v) for v in value]
        return names.get(value, value) if isinstance(value, str) else value

    return hashlib.sha256(json.dumps(strip(config), sort_keys=True, default=str).encode()).hexdigest()


def _cache_folder(cache_dir: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{key['network']}-{key['runtime']}-{digest}"


def _import_openvino():
    try:
        import openvino
    except ImportError as err:  # also a broken install, whose native library fails to load
        raise RuntimeUnavailable(f"the openvino package cannot be imported: {err}") from err
    return openvino


def openvino_infer(name: str, model, graph, *, precision: str = "float32", cache_dir=None,
                   threads: int | None = None) -> tuple[Callable[[np.ndarray], np.ndarray], dict]:
    """Returns an OpenVINO forward function for a Keras model, and what it did to get it.

    Args:
        name: the network's name (part of the cache folder's name).
        model: the Keras model, input (b, h, w, 3) float32, any b, h, w.
        graph: a ``tf.function`` of the model with an input signature of (None, None, None, 3);
            what is converted.
        precision: "float32" or "bfloat16" (inference precision; the weights stay float32).
        cache_dir: folder of cached conversions; None converts in memory every time.
        threads: inference threads; None uses every core this process may run on.

    Returns:
        (infer, info): ``infer(batch)`` takes (b, h, w, 3) float32 and returns the feature map
        as a new float32 array, safe to call from several threads; ``info`` has ``cached``
        (whether the IR came from the cache), ``convert_s``, ``compile_s`` and ``folder``.

    Raises:
        RuntimeUnavailable: openvino is not installed, or it cannot convert or compile the model.
        ValueError: unknown precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    ov = _import_openvino()
    t0 = time.perf_counter()
    folder, cached = None, False
    try:
        if cache_dir is not None:
            key = conversion_key(name, model, "openvino", ov.__version__)
            folder = _cache_folder(Path(cache_dir), key)
            ir = _read_cached(ov, folder, key)
            cached = ir is not None
            if ir is None:
                ir = _convert(ov, graph)
                _write_cache(ov, ir, folder, key)
        else:
            ir = _convert(ov, graph)
        t1 = time.perf_counter()
        threads = threads or len(os.sched_getaffinity(0))
        compiled = ov.Core().compile_model(ir, "CPU", {
            "INFERENCE_PRECISION_HINT": _OV_PRECISION[precision], "PERFORMANCE_HINT": "LATENCY",
            # OpenVINO counts physical cores only; a 2-vCPU Space may be one core with two threads.
            "INFERENCE_NUM_THREADS": threads,
        })
    except RuntimeUnavailable:
        raise
    except Exception as err:  # OpenVINO raises its own RuntimeError and others for unsupported graphs
        raise RuntimeUnavailable(f"OpenVINO cannot convert or compile {name}: {type(err).__name__}: {err}") from err
    t2 = time.perf_counter()
    request = compiled.create_infer_request()
    lock = threading.Lock()

    def infer(batch: np.ndarray) -> np.ndarray:
        with lock:  # one infer request: its output buffer is reused, hence the copy
            return np.array(request.infer({0: batch})[0], dtype=np.float32, copy=True)

    info = {"cached": cached, "convert_s": t1 - t0, "compile_s": t2 - t1, "threads": threads,
            "folder": str(folder) if folder else None, "version": ov.__version__}
    return infer, info


def _convert(ov, graph):
    _silence_telemetry()
    return ov.convert_model(graph.get_concrete_function())


def _silence_telemetry() -> None:
    """Swaps OpenVINO's converter telemetry (usage reports sent over the network unless the user
    opted out) for its own no-op stub: converting a network here sends nothing anywhere."""
    try:
        from openvino.tools.ovc import convert_impl, telemetry_stub, telemetry_utils
    except ImportError:  # another layout: nothing of this kind to silence, or nothing known
        return
    convert_impl.tm = telemetry_utils.tm = telemetry_stub


def _read_cached(ov, folder: Path, key: dict):
    try:
        if json.loads((folder / _KEY_FILE).read_text()) != key:
            return None
        return ov.Core().read_model(folder / "model.xml")
    except (OSError, ValueError, RuntimeError):  # absent, half-written or unreadable: convert again
        return None


def _write_cache(ov, ir, folder: Path, key: dict) -> None:
    """Writes the IR and its key into `folder`, atomically (a crash leaves no half of one)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        # compress_to_fp16 would halve the file but round every weight: keep float32.
        ov.save_model(ir, tmp / "model.xml", compress_to_fp16=False)
        (tmp / _KEY_FILE).write_text(json.dumps(key, indent=1, sort_keys=True) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
