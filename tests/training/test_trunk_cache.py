"""The frozen TorchScript copy of a trunk: the features of torchvision's network (batch norm
folded into the convolutions changes only the last bits of a float), rebuilt when damaged, and a
warm workspace that extracts new images without importing torchvision."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from annotate2model.store import Store
from annotate2model.store.imports import import_folder
from annotate2model.training import onnx_runtime, onnx_trunk, runner
from annotate2model.training.backbones import (
    build_trunk,
    load_state_dict,
    resolve_weights,
    trunk_state_from,
)
from annotate2model.training.data import Preprocessing
from annotate2model.training.device import autocast
from annotate2model.training.embeddings import EmbeddingCache, ExtractJob, extract
from annotate2model.workspace import Workspace
from tests.training.conftest import make_split_folder, small_config

pytestmark = pytest.mark.training


def _torchvision_trunk(weights: Path) -> torch.nn.Module:
    source = resolve_weights("resnet18", str(weights), 0)
    state = load_state_dict("resnet18", source)
    assert state is not None
    trunk = build_trunk("resnet18")
    trunk.load_state_dict(trunk_state_from("resnet18", state, str(weights), trunk))
    return trunk.eval()


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> bool:
    """Equal but for float rounding: within `rtol` of the larger output's scale."""
    return a.shape == b.shape and torch.allclose(
        a.float(), b.float(), rtol=rtol, atol=rtol * float(b.abs().max())
    )


# The CPU's extraction engines: ONNX Runtime where it is installed, else TorchScript (forced here
# by hiding ONNX Runtime).
ENGINES = {"onnx": ".onnx", "torchscript": ".torchscript"}


@pytest.fixture(params=sorted(ENGINES))
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    name = str(request.param)
    if name == "onnx":
        assert onnx_trunk.available(), "the test environment installs onnx and onnxruntime"
    else:
        # Where ONNX Runtime is missing: neither torch's exporter nor the torch-free probe
        # (lite.py) can use it.
        monkeypatch.setattr(onnx_trunk, "available", lambda: False)
        monkeypatch.setattr(onnx_runtime, "available", lambda: False)
    return name


def _frozen(cache: EmbeddingCache, engine: str) -> list[Path]:
    """The frozen copies a run left for `engine` (and none for the other)."""
    found = {
        name: sorted((cache.root / "trunks").glob(f"*{suffix}")) for name, suffix in ENGINES.items()
    }
    assert all(not files for name, files in found.items() if name != engine), found
    return found[engine]


def _load(cache: EmbeddingCache, path: Path) -> torch.nn.Module | None:
    return cache.load_onnx(path) if path.suffix == ".onnx" else cache.load_script(path)


def test_onnx_gives_the_torchvision_features(tmp_path: Path, weights: Path) -> None:
    cache = EmbeddingCache(tmp_path / "cache")
    model = _torchvision_trunk(weights)
    path = cache.onnx_path("resnet18", "id", 64)
    assert cache.save_onnx(path, model, 64) is not None
    loaded = cache.load_onnx(path)
    assert loaded is not None and isinstance(loaded, onnx_trunk.OnnxTrunk)
    for n in (1, 5):  # any batch size, either memory format
        x = torch.randn(n, 3, 64, 64)
        with torch.inference_mode():
            expected = model(x)
            assert _close(loaded(x), expected)
            assert _close(loaded(x.contiguous(memory_format=torch.channels_last)), expected)
    assert path != cache.onnx_path("resnet18", "other", 64)
    assert path != cache.onnx_path("resnet18", "id", 224)
    assert path != cache.onnx_path("resnet50", "id", 64)
    cache.close()


def test_script_gives_the_torchvision_features(tmp_path: Path, weights: Path) -> None:
    cache = EmbeddingCache(tmp_path / "cache")
    model = _torchvision_trunk(weights)
    path = cache.script_path("resnet18", "id", 64)
    assert cache.save_script(path, model, 64) is not None
    loaded = cache.load_script(path)
    assert loaded is not None
    x = torch.randn(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert _close(loaded(x), model(x))
        assert _close(loaded(x.contiguous()), model(x))  # any memory format in
        # bf16 autocast applies inside the frozen graph on the CPU as in eager mode.
        with autocast(torch.device("cpu"), True):
            eager, scripted = model(x), loaded(x)
    assert scripted.dtype == eager.dtype == torch.bfloat16
    assert _close(scripted, eager, rtol=3e-2)
    # Other weights, input size or torch version: another file.
    assert path != cache.script_path("resnet18", "other", 64)
    assert path != cache.script_path("resnet18", "id", 224)
    cache.close()


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-digest", "empty"])
def test_damaged_frozen_trunk_is_rebuilt(
    store: Store, version1: Path, weights: Path, damage: str, engine: str
) -> None:
    first = runner.train(store, small_config(weights))
    cache = runner.embedding_cache(store)
    (script,) = _frozen(cache, engine)
    digest = script.with_name(script.name + ".sha256")
    good = script.read_bytes()
    if damage == "truncate":
        script.write_bytes(good[: len(good) // 2])
    elif damage == "flip":
        script.write_bytes(good[:-100] + bytes([good[-100] ^ 1]) + good[-99:])
    elif damage == "no-digest":
        digest.unlink()
    else:
        script.write_bytes(b"")
    assert _load(cache, script) is None
    # New images need the trunk: the damaged copy is ignored and a good one written again.
    make_split_folder(version1, {"ants": 14, "bees": 12}, {}, seed=0)
    import_folder(store, version1)
    second = runner.train(store, small_config(weights))
    assert second.extraction is not None and second.extraction.computed == 2
    # (Archives are not byte-identical between saves: they carry a serialization id.)
    assert script.stat().st_size > len(good) // 2 and _load(cache, script) is not None
    assert second.run.metrics["splits"]["val"]["accuracy"] == pytest.approx(
        first.run.metrics["splits"]["val"]["accuracy"], abs=0.15
    )
    cache.close()


def test_features_from_the_frozen_trunk_equal_torchvision_ones(
    store: Store, version1: Path, weights: Path, tmp_path: Path, engine: str
) -> None:
    """A warm run (frozen copy) stores the vectors of a fresh build through torchvision."""
    runner.train(store, small_config(weights, precision="fp32"))
    cache = runner.embedding_cache(store)
    assert _frozen(cache, engine)
    paths = sorted(version1.rglob("*.png"))[:6]
    jobs = [ExtractJob(f"{i:064x}", p, 0) for i, p in enumerate(paths)]
    prep = Preprocessing(36, 32)
    cpu = torch.device("cpu")
    results = {}
    # bf16 runs never use ONNX Runtime (it computes in fp32): TorchScript's autocast only.
    for bf16 in (False, True) if engine == "torchscript" else (False,):
        (script,) = _frozen(cache, engine)
        scripted = _load(cache, script)
        assert scripted is not None
        for name, make in (
            ("script", lambda s=scripted: s),
            ("torchvision", lambda: _torchvision_trunk(weights)),
        ):
            other = EmbeddingCache(tmp_path / f"{name}-{bf16}")
            results[name, bf16], _ = extract(other, "k", "d", jobs, make, prep, cpu, bf16)
            other.close()
        for key, vec in results["torchvision", bf16].items():
            got = torch.from_numpy(results["script", bf16][key])
            assert _close(got, torch.from_numpy(vec), rtol=3e-2 if bf16 else 1e-4)
    cache.close()


WARM_RUN = """
import sys
from annotate2model.cli.app import main
sys.argv = ["a2m", "train", "--weights", sys.argv[1], "--image-size", "32", "--epochs", "2",
            "--json"]
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
print("TORCHVISION_IMPORTED" if "torchvision" in sys.modules else "NO_TORCHVISION")
"""


def test_warm_workspace_does_not_import_torchvision(
    workspace: Workspace, store: Store, version1: Path, weights: Path
) -> None:
    runner.train(store, small_config(weights, epochs=2))
    # A grown version: new images to extract, through the cached script.
    make_split_folder(version1, {"ants": 14, "bees": 12}, {}, seed=0)
    import_folder(store, version1)
    env = {**os.environ, "A2M_HOME": str(workspace.root), "NO_COLOR": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", WARM_RUN, str(weights)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("NO_TORCHVISION"), proc.stdout[-500:]
    run = json.loads(proc.stdout[: proc.stdout.rindex("NO_TORCHVISION")])
    assert run["status"] == "succeeded"
    extraction = run["metrics"]["timing"]["extraction"]
    assert extraction["computed"] == 2
    # With ONNX Runtime installed, their features were computed while torch was imported.
    assert extraction["early"] == (2 if onnx_trunk.available() else 0)
    assert "leaked" not in proc.stderr


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0"])
def test_other_backbones_trace_to_the_same_features(tmp_path: Path, backbone: str) -> None:
    torch.manual_seed(0)
    model = build_trunk(backbone).eval()
    cache = EmbeddingCache(tmp_path / "cache")
    path = cache.script_path(backbone, "none-seed0", 64)
    assert cache.save_script(path, model, 64) is not None
    loaded = cache.load_script(path)
    assert loaded is not None
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        assert _close(loaded(x), model(x))
    cache.close()
