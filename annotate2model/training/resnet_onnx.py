"""torchvision's ResNet-18 and ResNet-50 trunks written as ONNX from numpy weights, without torch.

The graph is the one torch.onnx.export writes for the trunk in eval mode (each batch norm folded
into the convolution before it): Conv+Relu, MaxPool, the residual blocks (Conv, Relu, ..., Add,
Relu), GlobalAveragePool and Flatten, from the NCHW float32 batch `images` to `features`
(batch, 512 or 2048). Batch norm is folded here in float64 and the weights stored as float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from annotate2model.training.onnx_runtime import INPUT, OPSET, OUTPUT

# torchvision's networks: block kind and blocks per stage (planes 64, 128, 256, 512).
_LAYOUTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
_EXPANSION = {"basic": 1, "bottleneck": 4}
_EPS = 1e-5  # nn.BatchNorm2d's default, which torchvision's ResNets keep
# The IR version torch's exporter writes at opset 18: what ONNX Runtime releases since 1.14 read.
_IR_VERSION = 8
_FLOAT32 = np.dtype("<f4")


@dataclass(frozen=True)
class _Conv:
    """A convolution (bias-free in torchvision) and the batch norm after it."""

    conv: str  # state-dict prefix of the convolution
    bn: str  # and of its batch norm
    shape: tuple[int, int, int, int]  # weight: out, in, kh, kw
    stride: int
    pad: int


@dataclass(frozen=True)
class _Block:
    """A residual block: its convolutions in order, then the downsample of its input, if any."""

    name: str
    convs: tuple[_Conv, ...]
    downsample: _Conv | None


def _blocks(backbone: str) -> list[_Block] | None:
    layout = _LAYOUTS.get(backbone)
    if layout is None:
        return None
    kind, counts = layout
    inplanes = 64
    blocks: list[_Block] = []
    for stage, count in enumerate(counts, start=1):
        planes = 64 * 2 ** (stage - 1)
        out = planes * _EXPANSION[kind]
        for index in range(count):
            stride = 2 if stage > 1 and index == 0 else 1
            name = f"layer{stage}.{index}"
            convs: tuple[_Conv, ...]
            if kind == "basic":
                convs = (
                    _Conv(f"{name}.conv1", f"{name}.bn1", (planes, inplanes, 3, 3), stride, 1),
                    _Conv(f"{name}.conv2", f"{name}.bn2", (planes, planes, 3, 3), 1, 1),
                )
            else:  # torchvision's v1.5 bottleneck: the stride on the 3x3 convolution
                convs = (
                    _Conv(f"{name}.conv1", f"{name}.bn1", (planes, inplanes, 1, 1), 1, 0),
                    _Conv(f"{name}.conv2", f"{name}.bn2", (planes, planes, 3, 3), stride, 1),
                    _Conv(f"{name}.conv3", f"{name}.bn3", (out, planes, 1, 1), 1, 0),
                )
            downsample = None
            if stride != 1 or inplanes != out:
                downsample = _Conv(
                    f"{name}.downsample.0", f"{name}.downsample.1", (out, inplanes, 1, 1), stride, 0
                )
            blocks.append(_Block(name, convs, downsample))
            inplanes = out
    return blocks


_STEM = _Conv("conv1", "bn1", (64, 3, 7, 7), 2, 3)


def trunk_shapes(backbone: str) -> dict[str, tuple[int, ...]] | None:
    """Every state-dict key of torchvision's `backbone` without its `fc`, and its shape, in the
    network's order; None for a backbone this module does not write."""
    blocks = _blocks(backbone)
    if blocks is None:
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    for conv in [_STEM] + [c for b in blocks for c in (*b.convs, b.downsample) if c is not None]:
        shapes[f"{conv.conv}.weight"] = conv.shape
        for field in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{conv.bn}.{field}"] = (conv.shape[0],)
        shapes[f"{conv.bn}.num_batches_tracked"] = ()
    return shapes


def _fold(
    state: dict[str, NDArray[Any]], conv: str, bn: str
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """The convolution's weight and bias with the batch norm after it folded in: computed in
    float64, stored as little-endian float32 (ONNX's raw data)."""
    gamma = np.asarray(state[f"{bn}.weight"], dtype=np.float64)
    beta = np.asarray(state[f"{bn}.bias"], dtype=np.float64)
    mean = np.asarray(state[f"{bn}.running_mean"], dtype=np.float64)
    var = np.asarray(state[f"{bn}.running_var"], dtype=np.float64)
    scale = gamma / np.sqrt(var + _EPS)
    source = state[f"{conv}.weight"]
    weight = np.empty(source.shape, dtype=_FLOAT32)
    # Each element multiplied in float64 and rounded once; numpy casts in small buffers, so the
    # weights are never held as a whole float64 copy.
    np.multiply(source, scale[:, None, None, None], out=weight, dtype=np.float64, casting="unsafe")
    bias = (beta - mean * scale).astype(_FLOAT32)
    return weight, bias


def _valid(backbone: str, state: dict[str, NDArray[Any]]) -> bool:
    shapes = trunk_shapes(backbone)
    if shapes is None or set(state) != set(shapes):
        return False
    for key, shape in shapes.items():
        value = state[key]
        if not isinstance(value, np.ndarray) or value.shape != shape:
            return False
        if not key.endswith("num_batches_tracked") and not np.issubdtype(value.dtype, np.floating):
            return False
    return True


def build(backbone: str, state: dict[str, NDArray[Any]], crop: int) -> bytes | None:
    """The serialized ONNX model of torchvision's `backbone` trunk in eval mode with the weights
    `state` (its keys and shapes exactly `trunk_shapes(backbone)`, no `fc`), for a batch of
    (batch, 3, crop, crop) float32 images; None for another backbone or other keys or shapes."""
    blocks = _blocks(backbone)
    if blocks is None or isinstance(crop, bool) or not isinstance(crop, int) or crop < 1:
        return None
    if not _valid(backbone, state):
        return None

    from onnx import GraphProto, ModelProto, TensorProto, helper

    nodes: list[Any] = []
    weights: list[tuple[str, NDArray[np.float32]]] = []

    def conv(source: str, spec: _Conv, relu: bool) -> str:
        weight, bias = _fold(state, spec.conv, spec.bn)
        weights.extend([(f"{spec.conv}.weight", weight), (f"{spec.conv}.bias", bias)])
        out = f"{spec.conv}.out"
        nodes.append(
            helper.make_node(
                "Conv",
                [source, f"{spec.conv}.weight", f"{spec.conv}.bias"],
                [out],
                name=spec.conv,
                kernel_shape=list(spec.shape[2:]),
                strides=[spec.stride] * 2,
                pads=[spec.pad] * 4,
            )
        )
        return relu_of(out, f"{spec.conv}.relu") if relu else out

    def relu_of(source: str, name: str) -> str:
        nodes.append(helper.make_node("Relu", [source], [name], name=name))
        return name

    x = conv(INPUT, _STEM, relu=True)
    nodes.append(
        helper.make_node(
            "MaxPool",
            [x],
            ["maxpool"],
            name="maxpool",
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
        )
    )
    x = "maxpool"
    for block in blocks:
        identity = x
        for position, spec in enumerate(block.convs):
            x = conv(x, spec, relu=position < len(block.convs) - 1)
        if block.downsample is not None:
            identity = conv(identity, block.downsample, relu=False)
        added = f"{block.name}.add"
        nodes.append(helper.make_node("Add", [x, identity], [added], name=added))
        x = relu_of(added, f"{block.name}.relu")
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["avgpool"], name="avgpool"))
    nodes.append(helper.make_node("Flatten", ["avgpool"], [OUTPUT], name="flatten", axis=1))

    width = blocks[-1].convs[-1].shape[0]
    graph = helper.make_graph(
        nodes,
        f"{backbone}_trunk",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 3, crop, crop])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", width])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=_IR_VERSION,
        producer_name="annotate2model",
    )
    # The weights go in after the protobuf library has written the rest: a second `graph` field
    # holding only the initializers, which any protobuf reader merges into the first. Their raw
    # bytes are copied once, into the result, instead of through every message that would hold
    # them (a third of a second for ResNet-18 otherwise).
    raw_tag = _tag(TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number)
    initializer_tag = _tag(GraphProto.DESCRIPTOR.fields_by_name["initializer"].number)
    parts: list[bytes | memoryview] = []
    for name, array in weights:
        head = TensorProto(
            name=name, data_type=TensorProto.FLOAT, dims=array.shape
        ).SerializeToString()
        raw = array.data.cast("B")  # C-contiguous, little-endian
        head += raw_tag + _varint(len(raw))
        parts += [initializer_tag, _varint(len(head) + len(raw)), head, raw]
    initializers_size = sum(len(part) for part in parts)
    graph_tag = _tag(ModelProto.DESCRIPTOR.fields_by_name["graph"].number)
    return b"".join([model.SerializeToString(), graph_tag, _varint(initializers_size), *parts])


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _tag(field: int) -> bytes:
    """A length-delimited field's key (wire type 2)."""
    return _varint(field << 3 | 2)
