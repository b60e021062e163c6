"""A torch.save state dict read into numpy arrays without importing torch.

A linear probe on the CPU runs its frozen trunk through ONNX Runtime, so it needs the weights as
numbers, not as torch tensors, and importing torch only to read them costs seconds. This module
reads the zip archive torch.save has written since torch 1.6:

    <top>/data.pkl       the pickled object, tensors as `_rebuild_tensor_v2(storage, offset,
                         size, stride, ...)` calls whose storages are persistent ids
                         ("storage", torch.FloatStorage, "<key>", "<location>", numel)
    <top>/data/<key>     each storage's raw bytes (stored, not compressed)
    <top>/byteorder      "little" or "big" (older files have none: little)
    <top>/.format_version  "1" (older files have none)
    <top>/version, .storage_alignment, ...

`data.pkl` is unpickled by a restricted unpickler that resolves only what a plain state dict of
tensors needs (OrderedDict, the two tensor rebuild functions, the typed storage classes numpy can
hold); any other global, a bf16 or quantized storage, a tensor with the conjugate or negative bit,
or a file of any other kind makes `read_numpy_state` give None, and the caller reads the file with
torch instead, which says what is wrong with it. Like torch (whose zip reader skips the check),
the storages' CRC-32 is not verified.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

# torch's legacy storage classes, as data.pkl names them (module "torch"), and the little-endian
# element type of each. BFloat16Storage is left out on purpose: numpy has no bfloat16.
_STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "<f8",
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra length


class _Refused(Exception):
    """The file holds something this reader does not handle: torch has to read it."""


@dataclass(frozen=True, slots=True)
class _StorageType:
    """What `torch.FloatStorage` and friends resolve to: the element type, nothing callable."""

    dtype: np.dtype[Any]


@dataclass(frozen=True, slots=True)
class _Storage:
    """One storage record's elements (a 1-D array over the record's bytes)."""

    key: str
    elements: NDArray[Any]


@dataclass(frozen=True, slots=True)
class _Tensor:
    """A rebuilt tensor. Frozen and slotted so that a pickle's BUILD cannot alter it."""

    array: NDArray[Any]


class _Archive:
    """The storage records of one torch.save archive, read from the file as they are named."""

    def __init__(
        self, file: io.BufferedReader, zf: zipfile.ZipFile, prefix: str, order: Literal["<", ">"]
    ) -> None:
        self._file = file
        self._zip = zf
        self._prefix = prefix
        self._order = order  # "<" or ">"
        self._raw: dict[str, NDArray[np.uint8]] = {}

    def _record(self, key: str) -> NDArray[np.uint8]:
        raw = self._raw.get(key)
        if raw is None:
            info = self._zip.getinfo(f"{self._prefix}data/{key}")
            if info.compress_type == zipfile.ZIP_STORED:
                # The record's bytes straight from the file into the array (torch aligns them;
                # the local header says where they start).
                self._file.seek(info.header_offset)
                signature, name_len, extra_len = _LOCAL_HEADER.unpack(
                    self._file.read(_LOCAL_HEADER.size)
                )
                if signature != b"PK\x03\x04":
                    raise _Refused(f"bad local header for {info.filename}")
                self._file.seek(info.header_offset + _LOCAL_HEADER.size + name_len + extra_len)
                raw = np.empty(info.file_size, dtype=np.uint8)
                if self._file.readinto(raw.data) != info.file_size:
                    raise _Refused(f"{info.filename} is cut short")
            else:  # torch never compresses, but a repacked archive may
                raw = np.frombuffer(bytearray(self._zip.read(info)), dtype=np.uint8)
            self._raw[key] = raw
        return raw

    def storage(self, type_: _StorageType, key: str, numel: int) -> _Storage:
        dtype = type_.dtype.newbyteorder(self._order) if type_.dtype.itemsize > 1 else type_.dtype
        raw = self._record(key)
        nbytes = numel * dtype.itemsize
        if numel < 0 or nbytes > raw.size:
            raise _Refused(f"storage {key} needs {nbytes} bytes, its record has {raw.size}")
        elements = raw[:nbytes].view(dtype)
        if not dtype.isnative:
            elements = elements.astype(dtype.newbyteorder("="))
        return _Storage(key, elements)


def _int_tuple(value: object) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise _Refused("a tensor's size or stride is not a tuple of ints")
    return value


def _rebuild_tensor(
    storage: object,
    offset: object,
    size: object,
    stride: object,
    requires_grad: object = False,
    backward_hooks: object = None,
    metadata: object = None,
) -> _Tensor:
    """torch._utils._rebuild_tensor_v2's arguments to a C-contiguous array."""
    if not isinstance(storage, _Storage) or not isinstance(offset, int) or offset < 0:
        raise _Refused("a tensor without a storage")
    shape, steps = _int_tuple(size), _int_tuple(stride)
    if metadata:  # the conjugate or negative bit: numbers numpy would read wrong
        raise _Refused("a tensor with metadata")
    if len(shape) != len(steps) or any(n < 0 for n in shape) or any(s < 0 for s in steps):
        raise _Refused("a tensor with a bad size or stride")
    elements = storage.elements
    if 0 in shape:
        return _Tensor(np.empty(shape, dtype=elements.dtype))
    last = offset + sum((n - 1) * s for n, s in zip(shape, steps, strict=True))
    if last >= elements.size:
        raise _Refused(f"a tensor reaches past the end of storage {storage.key}")
    count = math.prod(shape)
    contiguous = True
    expected = 1
    for n, s in zip(reversed(shape), reversed(steps), strict=True):
        if n != 1 and s != expected:
            contiguous = False
            break
        expected *= n
    if contiguous:  # the common case: a view of the storage, no copy
        return _Tensor(elements[offset : offset + count].reshape(shape))
    item = elements.itemsize
    view = np.lib.stride_tricks.as_strided(
        elements[offset:],
        shape=shape,
        strides=tuple(s * item for s in steps),
        writeable=False,
    )
    return _Tensor(np.array(view, order="C", copy=True))


def _rebuild_parameter(data: object, requires_grad: object, backward_hooks: object) -> _Tensor:
    if not isinstance(data, _Tensor):
        raise _Refused("a parameter without a tensor")
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, archive: _Archive) -> None:
        super().__init__(file)
        self._archive = archive

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(np.dtype(_STORAGE_DTYPES[name]))
        raise _Refused(f"global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5):
            raise _Refused("an unknown persistent id")
        typename, type_, key, _location, numel = pid
        if (
            typename not in ("storage", b"storage")
            or not isinstance(type_, _StorageType)
            or not isinstance(key, str)
            or not isinstance(numel, int)
        ):
            raise _Refused("an unknown persistent id")
        # The location (cpu, cuda:0, ...) does not matter: the bytes are in the archive.
        return self._archive.storage(type_, key, numel)


def _pickle_name(zf: zipfile.ZipFile) -> str:
    """`<top>/data.pkl`, when every record lies in that one top folder (as torch requires)."""
    names = zf.namelist()
    tops = {name.split("/", 1)[0] for name in names}
    if len(tops) != 1 or any("/" not in name for name in names):
        raise _Refused("not a single top folder")
    name = f"{tops.pop()}/data.pkl"
    if name not in names:
        raise _Refused("no data.pkl")
    return name


def _read(file: io.BufferedReader) -> dict[str, NDArray[Any]]:
    if file.read(4) != b"PK\x03\x04":
        raise _Refused("not a zip archive (a legacy torch.save file or no weights at all)")
    file.seek(0)
    with zipfile.ZipFile(file) as zf:
        pickle_name = _pickle_name(zf)
        prefix = pickle_name.removesuffix("data.pkl")
        names = set(zf.namelist())
        # Format 1 is the only one so far; a later one may lay out the records otherwise.
        if f"{prefix}.format_version" in names and zf.read(f"{prefix}.format_version") != b"1":
            raise _Refused("an archive format after 1")
        order: Literal["<", ">"] = "<"
        if f"{prefix}byteorder" in names:
            mark = zf.read(f"{prefix}byteorder")
            if mark not in (b"little", b"big"):
                raise _Refused("unknown byte order")
            order = "<" if mark == b"little" else ">"
        archive = _Archive(file, zf, prefix, order)
        loaded = _Unpickler(io.BytesIO(zf.read(pickle_name)), archive).load()
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, _Tensor) for v in loaded.values()):
        raise _Refused("not a dict of tensors")
    return {str(k).removeprefix("module."): v.array for k, v in loaded.items()}


def read_numpy_state(path: Path) -> dict[str, NDArray[Any]] | None:
    """The state dict in a torch.save file as C-contiguous numpy arrays, by name (a
    {"state_dict": ...} wrapper unwrapped, a "module." prefix dropped, as
    `backbones.read_state_dict` does); None when the file is anything this reader does not
    handle, or cannot be read at all (OSError included): the caller then reads it with torch,
    whose error says what is wrong.

    Arrays keep their element type (float32 stays float32; `num_batches_tracked` is an int64
    array of shape ()). Contiguous tensors are views of the bytes read (two of one storage share
    memory, as torch's tensors do); others (transposes, strided slices) are copies.
    """
    try:
        with path.open("rb") as file:
            return _read(file)
    except Exception:  # never an error from here: torch reads the file and explains
        return None
