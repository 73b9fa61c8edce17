"""CPU inference runtimes for a Keras network: the same weights, converted once and cached.

Keras stays the definition of every network (`retrieval.networks` builds and checks it); a
runtime here runs the same graph faster on a CPU. Only `retrieval.networks` calls this module.

- ``onnxruntime``: the Keras layers written as an ONNX graph by `retrieval.onnx_export` (a second
  for B7: no graph tracing, no optimiser of its own; ONNX Runtime optimises it when it loads),
  float32, dynamic batch, height and width, run by ONNX Runtime's CPU provider. No compilation
  per input size, so a new query size costs what a repeated one does.
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

__all__ = ["PRECISIONS", "RuntimeUnavailable", "conversion_key", "onnxruntime_infer", "openvino_infer"]

PRECISIONS = ("float32", "bfloat16")
_OV_PRECISION = {"float32": "f32", "bfloat16": "bf16"}
_KEY_FILE = "key.json"
# ONNX Runtime runs a batch in chunks of this many images: measured on 2 cores at 384x288, B7 took
# 99 ms an image one or two at a time against 128 ms in batches of 8 (the activations of a large
# batch outgrow the caches), and Lite0 7.5 ms in twos against 12.6 ms in eights.
_ONNX_CHUNK = 2


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
    would otherwise get two keys; likewise the model's own name ("functional_3") is left out.
    """
    config = {**model.get_config(), "name": None}
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


def _import_onnxruntime():
    try:
        import onnx  # noqa: F401  (writes the graph)
        import onnxruntime
    except ImportError as err:
        raise RuntimeUnavailable(f"the onnxruntime and onnx packages cannot be imported: {err}") from err
    return onnxruntime


def onnxruntime_infer(name: str, model, *, cache_dir=None,
                      threads: int | None = None) -> tuple[Callable[[np.ndarray], np.ndarray], dict]:
    """Returns an ONNX Runtime forward function for a Keras model, and what it did to get it.

    Args:
        name: the network's name (part of the cache folder's name).
        model: the Keras model, input (b, h, w, 3) float32, any b, h, w, made of the layers
            `retrieval.onnx_export` knows.
        cache_dir: folder of cached conversions; None converts in memory every time.
        threads: inference threads; None uses every core this process may run on.

    Returns:
        (infer, info): ``infer(batch)`` takes (b, h, w, 3) float32 and returns the feature map
        as a new float32 array, safe to call from several threads; ``info`` has ``cached``,
        ``convert_s``, ``compile_s`` (loading and optimising the session) and ``folder``.

    Raises:
        RuntimeUnavailable: onnxruntime or onnx is not installed, the network has a layer the
            converter does not know, or ONNX Runtime cannot load the graph.
    """
    ort = _import_onnxruntime()
    from retrieval import onnx_export
    from retrieval.onnx_export import UnsupportedLayer

    t0 = time.perf_counter()
    threads = threads or len(os.sched_getaffinity(0))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Threads spin while a forward pass runs and stop the moment it returns. Spinning throughout (ONNX
    # Runtime's default) left a spinning thread taking a core from the search that follows (AMD EPYC:
    # B7 queries embedded in 114.7 ms and searched in 37.2, against 103.6 and 30.5 without spinning);
    # no spinning at all made B7's forward pass 131 ms against 112 ms spinning (Intel Xeon, 2 cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.log_severity_level = 3  # errors only
    def open_session(source):
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])

    folder, cached, session = None, False, None
    try:
        if cache_dir is not None:
            # The converter's version too: a graph written differently is converted again.
            key = conversion_key(name, model, "onnxruntime", f"{ort.__version__}+export{onnx_export.VERSION}")
            folder = _cache_folder(Path(cache_dir), key)
            if _key_matches(folder, key):
                t1 = time.perf_counter()
                try:
                    session = open_session(str(folder / "model.onnx"))
                    cached = True
                except Exception:  # absent, truncated or unreadable: convert again  # noqa: BLE001
                    session = None
            if session is None:
                proto = onnx_export.keras_to_onnx(model, name=name)
                _write_folder(folder, key, lambda tmp: (tmp / "model.onnx").write_bytes(proto.SerializeToString()))
                t1 = time.perf_counter()
                session = open_session(str(folder / "model.onnx"))
        else:
            source = onnx_export.keras_to_onnx(model, name=name).SerializeToString()
            t1 = time.perf_counter()
            session = open_session(source)
    except UnsupportedLayer as err:
        raise RuntimeUnavailable(f"{name} cannot be written as ONNX: {err}") from err
    except Exception as err:  # onnxruntime raises its own exception types for graphs it refuses
        raise RuntimeUnavailable(f"ONNX Runtime cannot load {name}: {type(err).__name__}: {err}") from err
    t2 = time.perf_counter()
    feature_name = session.get_outputs()[0].name
    image_name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run([feature_name], {image_name: batch})[0], dtype=np.float32)

    def infer(batch: np.ndarray) -> np.ndarray:
        if len(batch) <= _ONNX_CHUNK:
            return run(batch)
        return np.concatenate([run(batch[i:i + _ONNX_CHUNK]) for i in range(0, len(batch), _ONNX_CHUNK)])

    info = {"cached": cached, "convert_s": t1 - t0, "compile_s": t2 - t1, "threads": threads,
            "folder": str(folder) if folder else None, "version": ort.__version__}
    return infer, info


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


def _key_matches(folder: Path, key: dict) -> bool:
    try:
        return json.loads((folder / _KEY_FILE).read_text()) == key
    except (OSError, ValueError):  # absent or half-written: convert again
        return False


def _read_cached(ov, folder: Path, key: dict):
    if not _key_matches(folder, key):
        return None
    try:
        return ov.Core().read_model(folder / "model.xml")
    except (OSError, ValueError, RuntimeError):  # unreadable: convert again
        return None


def _write_cache(ov, ir, folder: Path, key: dict) -> None:
    # compress_to_fp16 would halve the file but round every weight: keep float32.
    _write_folder(folder, key, lambda tmp: ov.save_model(ir, tmp / "model.xml", compress_to_fp16=False))


def _write_folder(folder: Path, key: dict, write: Callable[[Path], object]) -> None:
    """Fills `folder` with what `write(tmp)` puts in a new folder, and the key, atomically
    (a crash leaves no half of one: the key is written last, and the folder renamed into place)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        write(tmp)
        (tmp / _KEY_FILE).write_text(json.dumps(key, indent=1, sort_keys=True) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
