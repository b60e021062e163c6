"""resnet_onnx: torchvision's ResNet trunks written as ONNX from numpy weights give the network's
own features under ONNX Runtime, and nothing but those exact weights is accepted."""

from __future__ import annotations

from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from numpy.typing import NDArray

from annotate2model.training import onnx_runtime, resnet_onnx
from annotate2model.training.checkpoint import read_numpy_state
from annotate2model.training.onnx_runtime import INPUT, OPSET, OUTPUT
from annotate2model.training.vision import import_torchvision, meta_init_skipped
from tests.conftest import run_python

pytestmark = pytest.mark.training

WIDTH = {"resnet18": 512, "resnet50": 2048}
CONVS = {"resnet18": 20, "resnet50": 53}


def _trunk(backbone: str, num_classes: int = 1000) -> torch.nn.Module:
    model: torch.nn.Module = import_torchvision().models.get_model(
        backbone, weights=None, num_classes=num_classes
    )
    return model


@cache
def _random_network(backbone: str) -> tuple[torch.nn.Module, dict[str, NDArray[Any]]]:
    """torchvision's trunk with random weights and random batch-norm statistics and affine
    parameters (so that folding them into the convolutions matters), and its state in numpy."""
    torch.manual_seed(1)
    model = _trunk(backbone)
    model.fc = torch.nn.Identity()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                assert module.running_mean is not None and module.running_var is not None
                assert module.num_batches_tracked is not None
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(7)
    model.eval()
    return model, {k: v.numpy() for k, v in model.state_dict().items()}


def _features(data: bytes, batch: NDArray[Any]) -> NDArray[Any]:
    session = onnx_runtime.open_session(data, 2)
    assert session is not None
    return onnx_runtime.run(session, batch)


def _check_same(model: torch.nn.Module, state: dict[str, NDArray[Any]], backbone: str) -> None:
    """ONNX Runtime on `build` gives the torch output, on 3 images at 224 and 1 at 160."""
    generator = torch.Generator().manual_seed(0)
    for batch, crop in ((3, 224), (1, 160)):
        data = resnet_onnx.build(backbone, state, crop)
        assert data is not None
        images = torch.randn(batch, 3, crop, crop, generator=generator)
        with torch.inference_mode():
            expected = model(images).numpy()
        got = _features(data, images.numpy())
        assert got.shape == expected.shape == (batch, WIDTH[backbone])
        scale = float(np.abs(expected).max())
        assert scale > 0
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_random_weights_give_torchvisions_features(backbone: str) -> None:
    model, state = _random_network(backbone)
    _check_same(model, state, backbone)


def test_the_shared_scenes_weights_give_torchvisions_features(scenes_weights: Path) -> None:
    model = _trunk("resnet18", num_classes=6)
    model.load_state_dict(torch.load(scenes_weights, map_location="cpu", weights_only=True))
    model.fc = torch.nn.Identity()
    model.eval()
    state = read_numpy_state(scenes_weights)
    assert state is not None
    trunk = {k: v for k, v in state.items() if not k.startswith("fc.")}
    _check_same(model, trunk, "resnet18")


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_trunk_shapes_are_torchvisions(backbone: str) -> None:
    with meta_init_skipped(), torch.device("meta"):
        reference = _trunk(backbone).state_dict()
    expected = {k: tuple(v.shape) for k, v in reference.items() if not k.startswith("fc.")}
    shapes = resnet_onnx.trunk_shapes(backbone)
    assert shapes == expected
    assert shapes is not None and list(shapes) == list(expected)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_the_graph(backbone: str) -> None:
    _model, state = _random_network(backbone)
    data = resnet_onnx.build(backbone, state, 96)
    assert data is not None
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
    graph = model.graph
    (images,) = graph.input
    (features,) = graph.output
    assert images.name == INPUT and features.name == OUTPUT
    dims = [(d.dim_param, d.dim_value) for d in images.type.tensor_type.shape.dim]
    assert dims == [("batch", 0), ("", 3), ("", 96), ("", 96)]
    dims = [(d.dim_param, d.dim_value) for d in features.type.tensor_type.shape.dim]
    assert dims == [("batch", 0), ("", WIDTH[backbone])]
    ops = Counter(node.op_type for node in graph.node)
    assert ops["Conv"] == CONVS[backbone]
    assert set(ops) == {"Conv", "Relu", "MaxPool", "Add", "GlobalAveragePool", "Flatten"}
    assert len(graph.initializer) == 2 * CONVS[backbone]
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in graph.initializer)
    # The first convolution's weights: bn1 folded in, in float64, rounded once.
    (conv1,) = [t for t in graph.initializer if t.name == "conv1.weight"]
    scale = state["bn1.weight"].astype(np.float64) / np.sqrt(
        state["bn1.running_var"].astype(np.float64) + 1e-5
    )
    folded = (state["conv1.weight"] * scale[:, None, None, None]).astype(np.float32)
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(conv1), folded)


def _changed(state: dict[str, NDArray[Any]], **edits: Any) -> dict[str, NDArray[Any]]:
    out = dict(state)
    for key, value in edits.items():
        key = key.replace("__", ".")
        if value is None:
            del out[key]
        else:
            out[key] = value
    return out


def test_other_keys_or_shapes_are_refused() -> None:
    _model, state = _random_network("resnet18")
    assert resnet_onnx.build("resnet18", state, 64) is not None
    refused = {
        "missing": _changed(state, layer4__1__bn2__running_var=None),
        "with fc": {**state, "fc.weight": np.zeros((6, 512), np.float32)},
        "extra": {**state, "layer5.0.conv1.weight": np.zeros((1,), np.float32)},
        "shape": _changed(state, layer1__0__conv1__weight=np.zeros((64, 64, 1, 1), np.float32)),
        "bn shape": _changed(state, bn1__bias=np.zeros((63,), np.float32)),
        "integers": _changed(state, conv1__weight=np.zeros((64, 3, 7, 7), np.int64)),
        "not an array": _changed(state, bn1__bias=[0.0] * 64),
        "prefixed": {f"module.{k}": v for k, v in state.items()},
        "empty": {},
    }
    for what, changed in refused.items():
        assert resnet_onnx.build("resnet18", changed, 64) is None, what
    # resnet18's weights are not resnet50's, nor the other way round.
    assert resnet_onnx.build("resnet50", state, 64) is None
    assert resnet_onnx.build("resnet18", _random_network("resnet50")[1], 64) is None
    for crop in (0, -1):
        assert resnet_onnx.build("resnet18", state, crop) is None


@pytest.mark.parametrize("backbone", ["resnet34", "resnet101", "efficientnet_b0", "vit_b_16", ""])
def test_other_backbones_are_not_written(backbone: str) -> None:
    _model, state = _random_network("resnet18")
    assert resnet_onnx.trunk_shapes(backbone) is None
    assert resnet_onnx.build(backbone, state, 64) is None


def test_building_and_running_does_not_import_torch() -> None:
    run_python(
        """
        import sys

        import numpy as np

        from annotate2model.training import onnx_runtime, resnet_onnx

        rng = np.random.default_rng(0)
        shapes = resnet_onnx.trunk_shapes("resnet18")
        state = {
            k: rng.uniform(0.5, 1.5, s).astype(np.float32) if s else np.array(0, np.int64)
            for k, s in shapes.items()
        }
        data = resnet_onnx.build("resnet18", state, 64)
        session = onnx_runtime.open_session(data, 1)
        features = onnx_runtime.run(session, np.zeros((2, 3, 64, 64), np.float32))
        assert features.shape == (2, 512), features.shape
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
        assert not loaded, loaded
        """,
        timeout=120,
    )
