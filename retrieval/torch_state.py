"""Read a PyTorch state dict saved in the legacy (pre-zip) format, without PyTorch.

The legacy ``torch.save`` file is a run of pickles followed by raw tensor data:

1. magic number, 2. protocol version, 3. system info (endianness, type sizes),
4. the state dict itself, whose tensors point at storages by key,
5. the list of storage keys, in the order their data follows,
6. for each storage: its element count as little-endian int64, then its raw bytes.

Pickles can run arbitrary code, so the unpickler here admits only the few names a state
dict is made of and refuses everything else before anything is called.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass
from os import PathLike
from typing import BinaryIO

import numpy as np

__all__ = ["TorchStateError", "load_legacy_state_dict"]

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class TorchStateError(ValueError):
    """The file is not a legacy PyTorch state dict this reader can load safely."""


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_STORAGE_DTYPES[self.name]).newbyteorder("<")


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, _StorageRef):
        raise TorchStateError("a tensor in the state dict does not refer to a storage")
    return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size),
                      tuple(int(s) for s in stride))


class _StateDictUnpickler(pickle.Unpickler):
    """Admits OrderedDict, tensors and typed storages; refuses any other global."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise TorchStateError(
            f"refusing to load {module}.{name}: a PyTorch state dict holds only "
            "OrderedDicts, tensors and storages, so this file is not one (or is unsafe)"
        )

    def persistent_load(self, pid):
        # ('storage', type, key, location, numel, view_metadata); the last is None except in
        # files from PyTorch < 0.4, whose storage views state dicts do not need.
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise TorchStateError(f"unexpected persistent id in state dict: {pid!r}")
        _, storage_type, key, _location, numel, view_metadata = pid
        if not isinstance(storage_type, _StorageType):
            raise TorchStateError(f"unexpected storage type in state dict: {storage_type!r}")
        if view_metadata is not None:
            raise TorchStateError("storage views (PyTorch < 0.4 files) are not supported")
        return _StorageRef(str(key), storage_type.dtype, int(numel))


def _load(f: BinaryIO):
    try:
        return _StateDictUnpickler(f).load()
    except TorchStateError:
        raise
    except Exception as err:  # a truncated or corrupt pickle raises many kinds
        raise TorchStateError(f"cannot read pickle in state dict file: {err}") from err


def _read_storages(f: BinaryIO, keys: list, wanted: dict[str, _StorageRef]) -> dict[str, np.ndarray]:
    data = {}
    for key in keys:
        ref = wanted.get(key)
        if ref is None:
            raise TorchStateError(f"storage {key!r} is listed but no tensor uses it")
        header = f.read(8)
        if len(header) != 8:
            raise TorchStateError(f"file ends before storage {key!r}")
        (numel,) = struct.unpack("<q", header)
        if numel != ref.numel or numel < 0:
            raise TorchStateError(f"storage {key!r} holds {numel} elements, expected {ref.numel}")
        nbytes = numel * ref.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise TorchStateError(f"file ends inside storage {key!r}")
        data[key] = np.frombuffer(raw, dtype=ref.dtype)
    missing = set(wanted) - set(data)
    if missing:
        raise TorchStateError(f"no data for storages {sorted(missing)[:5]}")
    return data


def _materialise(tensor: _TensorRef, storage: np.ndarray) -> np.ndarray:
    shape, stride = tensor.shape, tensor.stride
    if len(shape) != len(stride) or any(s < 0 for s in shape + stride) or tensor.offset < 0:
        raise TorchStateError(f"bad tensor layout: shape {shape}, stride {stride}")
    if 0 in shape:
        return np.zeros(shape, dtype=storage.dtype.newbyteorder("="))
    last = tensor.offset + sum((n - 1) * s for n, s in zip(shape, stride))
    if last >= storage.size:  # as_strided would read outside the buffer
        raise TorchStateError(f"tensor reaches element {last} of a {storage.size}-element storage")
    view = np.lib.stride_tricks.as_strided(
        storage[tensor.offset:], shape=shape,
        strides=[s * storage.itemsize for s in stride], writeable=False)
    return np.array(view, dtype=storage.dtype.newbyteorder("="), order="C")


def load_legacy_state_dict(path: str | PathLike | BinaryIO) -> dict[str, np.ndarray]:
    """Return the tensors of a legacy-format PyTorch state dict as numpy arrays.

    Args:
        path: a ``.pth`` file written by ``torch.save`` before the zip format
            (``_use_new_zipfile_serialization=False``), or an open binary file.

    Returns:
        The state dict's entries in file order: name -> C-contiguous array in native byte
        order, with PyTorch's shape and dtype (e.g. a conv weight is (out, in, kh, kw)).

    Raises:
        TorchStateError: the file is not a legacy state dict, is truncated, or its pickle
            names anything besides OrderedDict, tensors and storages (nothing is called then).
    """
    if hasattr(path, "read"):
        return _load_state_dict(path)
    with open(path, "rb") as f:
        return _load_state_dict(f)


def _load_state_dict(f: BinaryIO) -> dict[str, np.ndarray]:
    start = f.read(2)
    if start == b"PK":
        raise TorchStateError("this is a zip-format PyTorch file; only the legacy format is read")
    f.seek(-len(start), io.SEEK_CUR)
    if _load(f) != _MAGIC_NUMBER:
        raise TorchStateError("not a legacy PyTorch file: wrong magic number")
    if _load(f) != _PROTOCOL_VERSION:
        raise TorchStateError("unsupported legacy PyTorch protocol version")
    sys_info = _load(f)
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian", False)):
        raise TorchStateError("only little-endian PyTorch files are supported")
    state = _load(f)
    if not isinstance(state, dict):
        raise TorchStateError(f"file holds a {type(state).__name__}, not a state dict")
    keys = _load(f)
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise TorchStateError("storage key list is malformed")

    tensors = {}
    for name, value in state.items():
        if not isinstance(value, _TensorRef):
            raise TorchStateError(f"state dict entry {name!r} is not a tensor")
        tensors[name] = value
    wanted = {t.storage.key: t.storage for t in tensors.values()}
    storages = _read_storages(f, keys, wanted)
    return {name: _materialise(t, storages[t.storage.key]) for name, t in tensors.items()}
