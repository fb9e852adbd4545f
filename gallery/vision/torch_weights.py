"""Read PyTorch's legacy (non-zip) checkpoint format with numpy only.

The offline EfficientNet-Lite0 weights ship as such a file. Installing torch just to
read 4.7M floats would add gigabytes to every install, so this reader understands the
format directly and refuses any pickle global it does not expect.

Layout: three small pickles (magic number, protocol version, system info), the
state-dict pickle whose persistent ids name storages, a pickle listing the storage keys
in file order, then each storage as an int64 element count and raw little-endian data.
"""

from __future__ import annotations

import collections
import pickle
from pathlib import Path
from typing import IO, Any

import numpy as np

_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "ByteStorage": np.dtype("u1"),
    "CharStorage": np.dtype("i1"),
    "BoolStorage": np.dtype("?"),
}


class CheckpointFormatError(ValueError):
    """The file is not a legacy PyTorch checkpoint this reader can safely load."""


class _TensorRef:
    """A tensor as described in the pickle: a view into a storage read later."""

    __slots__ = ("offset", "shape", "storage_key", "stride")

    def __init__(self, storage_key: str, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]):
        self.storage_key = storage_key
        self.offset = offset
        self.shape = tuple(shape)
        self.stride = tuple(stride)


class _StorageType:
    def __init__(self, name: str):
        self.name = name


def _rebuild_tensor_v2(storage: tuple[str, str], offset: int, shape: Any, stride: Any, *_: Any) -> _TensorRef:
    return _TensorRef(storage[0], offset, shape, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the handful of globals a plain state dict needs."""

    def __init__(self, file: IO[bytes], storages: dict[str, str]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise CheckpointFormatError(f"refusing to load global {module}.{name} from a checkpoint")

    def persistent_load(self, pid: Any) -> tuple[str, str]:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointFormatError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, _size = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointFormatError("storage type is not a known torch storage")
        self._storages[str(key)] = storage_type.name
        return (str(key), storage_type.name)


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return the checkpoint's tensors as numpy arrays, keyed by parameter name."""
    with open(path, "rb") as f:
        safe = _RestrictedUnpickler  # the header pickles hold only ints and dicts
        if safe(f, {}).load() != _MAGIC:
            raise CheckpointFormatError(f"{path} is not a legacy PyTorch checkpoint")
        safe(f, {}).load()  # protocol version
        info = safe(f, {}).load()
        if isinstance(info, dict) and not info.get("little_endian", True):
            raise CheckpointFormatError("big-endian checkpoints are not supported")
        storage_types: dict[str, str] = {}
        refs = _RestrictedUnpickler(f, storage_types).load()
        keys = safe(f, {}).load()
        data: dict[str, np.ndarray] = {}
        for key in keys:
            dtype = _STORAGE_DTYPES[storage_types[key]]
            (count,) = np.frombuffer(f.read(8), dtype="<i8")
            raw = f.read(int(count) * dtype.itemsize)
            if len(raw) != int(count) * dtype.itemsize:
                raise CheckpointFormatError(f"{path} is truncated")
            data[key] = np.frombuffer(raw, dtype=dtype)
    out: dict[str, np.ndarray] = {}
    for name, ref in refs.items():
        storage = data[ref.storage_key]
        itemsize = storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            storage[ref.offset :],
            shape=ref.shape,
            strides=tuple(s * itemsize for s in ref.stride),
        )
        out[name] = np.array(view, dtype=storage.dtype.newbyteorder("="))
    return out
