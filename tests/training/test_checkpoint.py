"""read_numpy_state: the arrays torch.load gives, read without torch, and None for anything it
does not handle (so that torch reads the file and explains)."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from annotate2model.training.checkpoint import read_numpy_state
from annotate2model.training.vision import import_torchvision, meta_init_skipped
from tests.conftest import run_python


def _assert_same(got: dict[str, NDArray[Any]] | None, expected: dict[str, torch.Tensor]) -> None:
    assert got is not None
    assert list(got) == list(expected)
    for key, tensor in expected.items():
        array = got[key]
        want = tensor.numpy()
        assert array.dtype == want.dtype, key
        assert array.shape == want.shape, key
        assert array.flags.c_contiguous, key
        np.testing.assert_array_equal(array, want, err_msg=key)


def _saved(tmp_path: Path, obj: object, name: str = "weights.pth", **options: Any) -> Path:
    path = tmp_path / name
    torch.save(obj, path, **options)
    return path


def test_the_shared_scenes_weights(scenes_weights: Path) -> None:
    expected = torch.load(scenes_weights, map_location="cpu", weights_only=True)
    got = read_numpy_state(scenes_weights)
    _assert_same(got, expected)
    assert got is not None
    assert got["conv1.weight"].dtype == np.float32
    assert got["bn1.num_batches_tracked"].dtype == np.int64
    assert got["bn1.num_batches_tracked"].shape == ()


def test_a_random_resnet50(tmp_path: Path) -> None:
    # The names, shapes and types, without initialising 25M weights; torchvision, and the meta
    # build, without importing torch._dynamo (2 s).
    torchvision = import_torchvision()
    with meta_init_skipped(), torch.device("meta"):
        meta = torchvision.models.get_model("resnet50", weights=None).state_dict()
    generator = torch.Generator().manual_seed(0)
    state = {
        k: torch.randn(v.shape, generator=generator)
        if v.is_floating_point()
        else torch.randint(0, 1000, v.shape, dtype=v.dtype, generator=generator)
        for k, v in meta.items()
    }
    path = _saved(tmp_path, state)
    _assert_same(read_numpy_state(path), torch.load(path, weights_only=True))


def test_views_of_one_storage(tmp_path: Path) -> None:
    base = torch.arange(240, dtype=torch.float32)
    longs = torch.arange(60, dtype=torch.int64)
    state = {
        "whole": base,
        "slice": base[10:30],
        "transposed": base[:60].view(6, 10).t(),
        "offset_strided": base[5:65].view(3, 4, 5)[:, 1:3, ::2],
        "scalar_view": base[7],
        "expanded": base[100:104].expand(3, 4),
        "permuted": base[:120].view(2, 3, 4, 5).permute(0, 3, 1, 2),
        "channels_last": torch.randn(8, 3, 5, 5).to(memory_format=torch.channels_last),
        "long_view": longs[3:27].view(4, 6)[:, 1:],
        "empty": base[:0].view(0, 3),
        "float64": torch.randn(4, 3, dtype=torch.float64).t(),
        "float16": torch.randn(10, dtype=torch.float16)[2:8],
        "int32": torch.arange(12, dtype=torch.int32).view(3, 4)[1:],
        "int16": torch.arange(6, dtype=torch.int16),
        "int8": torch.arange(-3, 3, dtype=torch.int8),
        "uint8": torch.arange(250, 256, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "count": torch.tensor(7, dtype=torch.int64),
    }
    path = _saved(tmp_path, state)
    got = read_numpy_state(path)
    _assert_same(got, torch.load(path, weights_only=True))
    _assert_same(got, state)


def test_a_state_dict_wrapper_with_module_prefixes(tmp_path: Path) -> None:
    inner = {"module.conv.weight": torch.randn(4, 3, 3, 3), "module.bn.bias": torch.randn(4)}
    wrapper = {
        "epoch": 3,
        "state_dict": inner,
        "optimizer": {"state": {0: {"momentum_buffer": torch.randn(4)}}, "lr": 0.1},
    }
    got = read_numpy_state(_saved(tmp_path, wrapper))
    _assert_same(got, {k.removeprefix("module."): v for k, v in inner.items()})


def test_parameters_are_read_as_tensors(tmp_path: Path) -> None:
    state = {"weight": torch.nn.Parameter(torch.randn(3, 2)), "bias": torch.randn(3)}
    path = _saved(tmp_path, state)
    _assert_same(read_numpy_state(path), {k: v.detach() for k, v in state.items()})


def test_a_top_folder_of_any_name(tmp_path: Path) -> None:
    state = {"w": torch.randn(5)}
    path = _saved(tmp_path, state, name="renamed")
    with zipfile.ZipFile(path) as zf:
        assert {name.split("/")[0] for name in zf.namelist()} == {"renamed"}
    _assert_same(read_numpy_state(path), state)


def _rewritten(path: Path, change: Any) -> None:
    """The archive at `path` with each record's bytes replaced by change(name, bytes)."""
    with zipfile.ZipFile(path) as zf:
        records = [(info.filename, zf.read(info)) for info in zf.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in records:
            zf.writestr(name, change(name, data))


def test_a_big_endian_archive(tmp_path: Path) -> None:
    # Each tensor its own storage: storage keys "0", "1", ... in the dict's order.
    state = {
        "f32": torch.randn(3, 4),
        "i64": torch.arange(5, dtype=torch.int64),
        "f16": torch.randn(6, dtype=torch.float16),
        "f64": torch.randn(2, 2, dtype=torch.float64).t(),
        "i32": torch.arange(-2, 2, dtype=torch.int32),
        "bool": torch.tensor([True, False]),
    }
    path = _saved(tmp_path, state)
    dtypes = {str(i): t.numpy().dtype for i, t in enumerate(state.values())}

    def swap(name: str, data: bytes) -> bytes:
        if name.endswith("/byteorder"):
            return b"big"
        folder, _, key = name.rpartition("/")
        if folder.endswith("/data") and key in dtypes:
            return np.frombuffer(data, dtype=dtypes[key]).byteswap().tobytes()
        return data

    _rewritten(path, swap)
    got = read_numpy_state(path)
    _assert_same(got, state)
    _assert_same(got, torch.load(path, weights_only=True))


def test_a_compressed_archive(tmp_path: Path) -> None:
    state = {"w": torch.randn(4, 4).t(), "n": torch.tensor(2)}
    path = _saved(tmp_path, state)
    with zipfile.ZipFile(path) as zf:
        records = [(info.filename, zf.read(info)) for info in zf.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in records:
            zf.writestr(name, data)
    _assert_same(read_numpy_state(path), state)


# ---- files torch has to read -----------------------------------------------------------------


def test_a_legacy_save_is_left_to_torch(tmp_path: Path) -> None:
    path = _saved(tmp_path, {"w": torch.randn(3)}, _use_new_zipfile_serialization=False)
    assert read_numpy_state(path) is None


def test_a_whole_module_is_left_to_torch(tmp_path: Path) -> None:
    assert read_numpy_state(_saved(tmp_path, torch.nn.Linear(3, 2))) is None


def test_bfloat16_is_left_to_torch(tmp_path: Path) -> None:
    state = {"w": torch.randn(3), "h": torch.randn(3).to(torch.bfloat16)}
    assert read_numpy_state(_saved(tmp_path, state)) is None


@pytest.mark.parametrize(
    "obj",
    [
        [torch.randn(3)],  # not a dict
        {"w": torch.randn(3), "epoch": 3},  # not only tensors
        {"w": torch.randn(3), "device": torch.device("cpu")},  # another global
        {"z": torch.randn(3, dtype=torch.complex64)},  # a storage numpy could hold, not allowed
        {"state_dict": {"w": torch.randn(3), "lr": 0.1}},
    ],
    ids=["list", "number", "device", "complex", "wrapped-number"],
)
def test_other_contents_are_left_to_torch(tmp_path: Path, obj: object) -> None:
    assert read_numpy_state(_saved(tmp_path, obj)) is None


def test_garbage_empty_missing_and_truncated_files(tmp_path: Path, scenes_weights: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(4096))
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    zip_magic = tmp_path / "magic.pth"
    zip_magic.write_bytes(b"PK\x03\x04" + os.urandom(200))
    truncated = tmp_path / "truncated.pth"
    data = scenes_weights.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    cut_end = tmp_path / "cut_end.pth"
    cut_end.write_bytes(data[:-100])
    for path in (garbage, empty, zip_magic, truncated, cut_end, tmp_path / "missing.pth"):
        assert read_numpy_state(path) is None, path.name
    assert read_numpy_state(tmp_path) is None  # a folder


def test_a_record_shorter_than_its_tensor(tmp_path: Path) -> None:
    path = _saved(tmp_path, {"w": torch.randn(10)})

    def shorten(name: str, data: bytes) -> bytes:
        return data[:20] if name.endswith("/data/0") else data

    _rewritten(path, shorten)
    assert read_numpy_state(path) is None


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_a_hostile_pickle_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = _saved(tmp_path, {"w": torch.randn(3)})
    hostile = pickle.dumps({"w": _Payload(marker)}, protocol=2)

    def replace(name: str, data: bytes) -> bytes:
        return hostile if name.endswith("/data.pkl") else data

    _rewritten(path, replace)
    assert read_numpy_state(path) is None
    assert not marker.exists()


def test_two_top_folders_are_left_to_torch(tmp_path: Path) -> None:
    path = _saved(tmp_path, {"w": torch.randn(3)})
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("other/extra", b"x")
    assert read_numpy_state(path) is None


def test_reading_does_not_import_torch(scenes_weights: Path) -> None:
    run_python(
        """
        import sys
        from pathlib import Path

        from annotate2model.training.checkpoint import read_numpy_state

        state = read_numpy_state(Path(sys.argv[1]))
        assert state is not None and "conv1.weight" in state
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
        assert not loaded, loaded
        """,
        str(scenes_weights),
        timeout=120,
    )
