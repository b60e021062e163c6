"""A probe on the CPU runs without torch (lite.py): ONNX Runtime runs the trunk, numpy trains the
head. torch is never imported on that path, the torch path gives the same run, and every doubt
(another device, bf16, weights only torch can read or judge) goes through torch."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from annotate2model.errors import TrainingError
from annotate2model.store import Store
from annotate2model.store.imports import import_folder
from annotate2model.training import lite, onnx_runtime, runner
from annotate2model.training.context import RunContext
from annotate2model.training.embeddings import EmbeddingCache
from annotate2model.training.images import Preprocessing
from annotate2model.training.weights import resolve_weights
from annotate2model.workspace import Workspace
from tests.conftest import image_bytes
from tests.training.conftest import make_split_folder, small_config

pytestmark = pytest.mark.training


def _a2m(workspace: Workspace, *args: str) -> tuple[dict[str, object], set[str]]:
    """`a2m ARGS --json` in its own process: the run, and every module the process imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "annotate2model", *args, "--json"],
        env={**os.environ, "A2M_HOME": str(workspace.root)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules = set(re.findall(r"^import time:.*\|\s*(\S+)\s*$", proc.stderr, re.MULTILINE))
    assert modules, "python -X importtime printed nothing"
    run: dict[str, object] = json.loads(proc.stdout)
    return run, modules


def _add_training_images(folder: Path, n: int) -> None:
    """`n` new images in the training split of an imported folder, half of each class."""
    for i in range(n):
        label = ("ants", "bees")[i % 2]
        (folder / "train" / label / f"new_{i}.png").write_bytes(image_bytes(990_000 + i))


def _torch(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in ("torch", "torchvision"))


def test_cpu_probes_cold_grown_and_cached_never_import_torch(
    workspace: Workspace, store: Store, tmp_path: Path, weights: Path
) -> None:
    folder = make_split_folder(tmp_path / "a", {"ants": 6, "bees": 6}, {"ants": 3, "bees": 3})
    import_folder(store, folder)
    base = ("train", "--weights", str(weights), "--image-size", "64", "--device", "cpu")
    base = (*base, "--precision", "fp32", "--epochs", "3")

    cold, modules = _a2m(workspace, *base)
    assert _torch(modules) == [] and "onnxruntime" in modules
    assert cold["status"] == "succeeded" and str(cold["device"]).startswith("cpu")
    timing = cold["metrics"]["timing"]  # type: ignore[index]
    assert timing["extraction"]["computed"] == 18

    _add_training_images(folder, 4)
    import_folder(store, folder)
    grown, modules = _a2m(workspace, *base)
    assert _torch(modules) == []
    extraction = grown["metrics"]["timing"]["extraction"]  # type: ignore[index]
    assert extraction["computed"] == 4 and extraction["cached"] == 18

    cached, modules = _a2m(workspace, *base, "--lr", "0.003")
    assert _torch(modules) == []
    assert cached["metrics"]["timing"]["extraction"]["computed"] == 0  # type: ignore[index]

    # The torch Predictor judges the torch-free run as the run judged itself: the hand-built
    # trunk and torchvision's give the same features, the saved head is the trained one.
    evaluation, modules = _a2m(workspace, "evaluate", str(cold["id"]), "--version", "1")
    assert "torch" in modules
    assert evaluation["accuracy"] == pytest.approx(cold["metrics"]["val_accuracy"])  # type: ignore[index]


def test_the_torch_path_gives_the_same_probe(
    store: Store, version1: Path, weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = small_config(weights, precision="fp32", epochs=4)
    base = RunContext.from_store(store)
    ctx_lite = dataclasses.replace(base, device="cpu", cache_dir=tmp_path / "lite")
    ctx_torch = dataclasses.replace(base, device="cpu", cache_dir=tmp_path / "torch")
    plans: list[lite.LitePlan | None] = []
    real_plan = lite.plan

    def recorded(*args: object) -> lite.LitePlan | None:
        plans.append(real_plan(*args))  # type: ignore[arg-type]
        return plans[-1]

    monkeypatch.setattr(lite, "plan", recorded)
    a = runner.train(store, config, context=ctx_lite).run
    monkeypatch.setattr(lite, "plan", lambda *args: None)
    b = runner.train(store, config, context=ctx_torch).run
    assert plans and plans[0] is not None, "the first run went without torch"

    caches = [EmbeddingCache(tmp_path / name) for name in ("lite", "torch")]
    try:
        rows = [
            dict(c._conn.execute("SELECT image_sha256 || view, data FROM vectors").fetchall())
            for c in caches
        ]
    finally:
        for c in caches:
            c.close()
    assert rows[0].keys() == rows[1].keys() and len(rows[0]) == 32
    for name, data in rows[0].items():
        x, y = np.frombuffer(data, np.float32), np.frombuffer(rows[1][name], np.float32)
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * float(np.abs(y).max()))

    dirs = [base.run_dir(a.id), base.run_dir(b.id)]
    trunks = [load_file(str(d / "trunk.safetensors")) for d in dirs]
    assert trunks[0].keys() == trunks[1].keys()
    for name in trunks[0]:
        assert trunks[0][name].dtype == trunks[1][name].dtype
        np.testing.assert_array_equal(trunks[0][name], trunks[1][name])
    heads = [load_file(str(d / "head.safetensors")) for d in dirs]
    for name in ("weight", "bias"):
        np.testing.assert_allclose(heads[0][name], heads[1][name], atol=1e-3)
    assert a.metrics["val_accuracy"] == b.metrics["val_accuracy"]
    assert a.device == b.device


def _plan(weights: str, tmp_path: Path, **changes: object) -> lite.LitePlan | None:
    config = small_config(Path(weights), **changes)
    if weights in ("none", "imagenet"):
        config = dataclasses.replace(config, weights=weights)
    source = resolve_weights(config.backbone, config.weights, config.seed)
    prep = Preprocessing(config.resize_size, config.image_size)
    device = str(changes.pop("device", "cpu")) if "device" in changes else "cpu"
    return lite.plan(config, source, prep, device, tmp_path / "cache")


def test_every_doubt_goes_through_torch(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = str(weights)
    assert _plan(w, tmp_path, precision="fp32") is not None
    assert _plan(w, tmp_path, precision="fp32", mode="finetune") is None
    assert _plan(w, tmp_path, precision="bf16") is None
    assert _plan("none", tmp_path, precision="fp32") is None  # torch's initialisation
    # A backbone resnet_onnx cannot build, with nothing in the cache.
    assert _plan(w, tmp_path / "other", precision="fp32", backbone="mobilenet_v2") is None
    config = small_config(weights, precision="fp32")
    source = resolve_weights(config.backbone, config.weights, config.seed)
    prep = Preprocessing(config.resize_size, config.image_size)
    assert lite.plan(config, source, prep, "cuda", tmp_path / "c") is None
    monkeypatch.setattr(lite, "native_bf16", lambda: True)
    assert _plan(w, tmp_path / "c2", precision="auto") is None
    monkeypatch.setattr(lite, "native_bf16", lambda: False)
    assert _plan(w, tmp_path / "c3", precision="auto") is not None


def test_weights_that_do_not_fit_get_the_torch_paths_message(
    store: Store, version1: Path, weights: Path, tmp_path: Path
) -> None:
    state = torch.load(weights, weights_only=True)
    del state["layer4.1.conv2.weight"]
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    config = small_config(broken, precision="fp32")
    source = resolve_weights(config.backbone, config.weights, config.seed)
    prep = Preprocessing(config.resize_size, config.image_size)
    assert lite.plan(config, source, prep, "cpu", tmp_path / "cache") is None
    with pytest.raises(TrainingError, match="do not fit resnet18: 1 missing"):
        runner.train(store, config)


def test_imagenet_weights_from_torch_hubs_cache(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    assert _plan("imagenet", tmp_path / "a", precision="fp32") is None  # a download: torch's
    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copyfile(weights, checkpoints / "resnet18-f37072fd.pth")
    plan = _plan("imagenet", tmp_path / "b", precision="fp32")
    assert plan is not None and plan.built is not None


def test_torch_hubs_folder_is_found_without_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = (
        "import sys; from annotate2model.training.weights import _hub_dir; "
        "print(_hub_dir()); sys.exit('torch' in sys.modules)"
    )
    cases = [
        {"TORCH_HOME": str(tmp_path / "th")},
        {"XDG_CACHE_HOME": str(tmp_path / "xdg")},
        {"HOME": str(tmp_path / "home")},
    ]
    for extra in cases:
        env = {k: v for k, v in os.environ.items() if k not in ("TORCH_HOME", "XDG_CACHE_HOME")}
        env.update(extra)
        got = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
        )
        assert got.returncode == 0, got.stderr
        expected = subprocess.run(
            [sys.executable, "-c", "import torch.hub; print(torch.hub.get_dir())"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert got.stdout.strip() == expected.stdout.strip()


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_bf16\n")
    assert lite.native_bf16(info) is True
    info.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_vnni\n")
    assert lite.native_bf16(info) is False
    info.write_text("processor : 0\n")
    assert lite.native_bf16(info) is None
    assert lite.native_bf16(tmp_path / "missing") is None


def test_a_corrupt_cached_trunk_falls_back_to_torch(
    store: Store, version1: Path, weights: Path, tmp_path: Path
) -> None:
    config = small_config(weights, precision="fp32")
    ctx = dataclasses.replace(RunContext.from_store(store), device="cpu")
    runner.train(store, config, context=ctx)
    (onnx_file,) = (ctx.cache_dir / "trunks").glob("*.onnx")
    good = onnx_file.read_bytes()
    onnx_file.write_bytes(good[: len(good) // 2])
    _add_training_images(version1, 4)
    import_folder(store, version1)
    outcome = runner.train(store, config, context=ctx)
    assert outcome.run.status == "succeeded"
    assert outcome.extraction is not None and outcome.extraction.computed == 4
    # The torch path exported the trunk again over the broken file.
    session = onnx_runtime.open_session(onnx_file.read_bytes(), 1)
    assert session is not None
