"""A run as one self-contained network file (ONNX or TorchScript), checked against the torch model.

The exported network takes what a server has after decoding: a batch of centre-cropped uint8 RGB
images (N, crop, crop, 3), and returns class probabilities (N, classes). Normalisation, the
members of an ensemble and the softmax are inside the graph, so serving it needs numpy and the
runtime only. The run's card (labels, preprocessing, run, version, metrics) travels in the file's
metadata (`a2m_card`): the file alone is enough to serve it.

    result = export_run(run_dir, "onnx")
    result.path, result.max_abs_diff   # model.onnx beside model.json, e.g. 3.1e-07
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from annotate2model.errors import InputError, TrainingError
from annotate2model.fsutil import atomic_write
from annotate2model.progress import NullProgress, Progress
from annotate2model.training.features.data import ImageInput
from annotate2model.training.features.device import autocast
from annotate2model.training.features.images import ImageSource, Preprocessing, load_image
from annotate2model.training.fit.trainer import class_probabilities
from annotate2model.training.runs import artifacts
from annotate2model.training.runs.onnx_file import CARD_KEY, INPUT_NAME, OUTPUT_NAME, open_session

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
# What torch's TorchScript-based exporter writes well for every backbone a2m offers.
OPSET = 18
# Largest difference in any probability between the file and the torch model that passes.
PARITY_TOLERANCE = 1e-4
SAMPLE_COUNT = 4


class ProbabilityModel(torch.nn.Module):
    """uint8 NHWC images to class probabilities: normalise, each member's softmax, their mean.

    A single run is an ensemble of one. `bf16_trunk` runs the trunks under bf16 autocast (the
    heads stay fp32, as the Predictor does); exports always use fp32.
    """

    def __init__(
        self, members: Sequence[tuple[torch.nn.Module, torch.nn.Module]], prep: Preprocessing
    ) -> None:
        super().__init__()
        self.normalise = ImageInput(prep)
        self.trunks = torch.nn.ModuleList([trunk for trunk, _ in members])
        self.heads = torch.nn.ModuleList([head for _, head in members])
        self.bf16_trunk = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalise(images)
        total = torch.zeros(1, device=x.device)
        for trunk, head in zip(self.trunks, self.heads, strict=True):
            with autocast(x.device, self.bf16_trunk):
                features = trunk(x)
            total = total + class_probabilities(head(features.float().flatten(1)))
        return total / len(self.trunks)


def _member_dirs(run_dir: Path, card: dict[str, Any]) -> list[Path]:
    if card.get("kind") == "ensemble":
        dirs: list[Path] = []
        for member in card["members"]:
            sub = run_dir.parent / str(member)
            dirs.extend(_member_dirs(sub, artifacts.read_card(sub)))
        return dirs
    if card.get("kind") != "classifier":
        raise TrainingError(f"{run_dir} holds a {card.get('kind')}, not a classifier.")
    return [run_dir]


def probability_model(run_dir: Path) -> tuple[ProbabilityModel, dict[str, Any]]:
    """The run's network (an ensemble's members, averaged) as a ProbabilityModel, in eval mode;
    with the card, whose `labels` and `preprocessing` are the network's."""
    card = artifacts.read_card(run_dir)
    members: list[tuple[torch.nn.Module, torch.nn.Module]] = []
    labels: list[str] | None = None
    prep: Preprocessing | None = None
    for member_dir in _member_dirs(run_dir, card):
        classifier, member_card = artifacts.load_classifier(member_dir)
        size = member_card["preprocessing"]
        member_prep = Preprocessing(int(size["resize"]), int(size["crop"]))
        if labels is not None and member_card["labels"] != labels:
            raise TrainingError("the ensemble's members were trained on different label sets.")
        if prep is not None and member_prep != prep:
            raise TrainingError(
                "the ensemble's members take different image sizes; they cannot run as one network."
            )
        labels, prep = list(member_card["labels"]), member_prep
        trunk: torch.nn.Module = classifier.trunk  # type: ignore[assignment]
        head: torch.nn.Module = classifier.head  # type: ignore[assignment]
        members.append((trunk, head))
    assert prep is not None and labels is not None
    model = ProbabilityModel(members, prep).eval()
    return model, {**card, "labels": labels, "preprocessing": prep.as_dict()}


def card_metadata(card: dict[str, Any]) -> str:
    """What an exported file carries of the card: enough to serve and describe it."""
    keep = (
        "kind",
        "architecture",
        "labels",
        "preprocessing",
        "version",
        "run",
        "members",
        "metrics",
        "precision",
    )
    small = {k: card[k] for k in keep if k in card}
    config = card.get("config") or {}
    small["config"] = {k: config[k] for k in ("backbone", "weights", "mode") if k in config}
    return json.dumps(small, sort_keys=True)


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    run: int | None
    labels: list[str]
    # Largest difference in any probability between the file and the torch model.
    max_abs_diff: float
    samples: int
    seconds: float


def sample_batch(
    prep: Preprocessing,
    images: Sequence[ImageSource] = (),
    count: int = SAMPLE_COUNT,
    max_pixels: int | None = None,
) -> NDArray[np.uint8]:
    """Parity inputs: the given images decoded as a server would, else seeded random pixels."""
    if images:
        arrays = [load_image(src, prep, max_pixels=max_pixels) for src in images]
        return np.stack(arrays).astype(np.uint8)
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(count, prep.crop, prep.crop, 3), dtype=np.uint8)


def export_run(
    run_dir: Path,
    fmt: str,
    output: Path | None = None,
    images: Sequence[ImageSource] = (),
    progress: Progress | None = None,
) -> ExportResult:
    """Write the run as `fmt` (onnx or torchscript) and check it against the torch model on
    sample inputs; TrainingError when they differ by more than PARITY_TOLERANCE."""
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    progress = progress or NullProgress()
    started = time.perf_counter()
    model, card = probability_model(run_dir)
    prep = Preprocessing(card["preprocessing"]["resize"], card["preprocessing"]["crop"])
    path = output or run_dir / f"model{SUFFIXES[fmt]}"
    if path.is_dir():
        path = path / f"model{SUFFIXES[fmt]}"
    if not path.parent.is_dir():
        raise InputError(f"{path.parent} is not a folder.")
    batch = sample_batch(prep, images)
    progress.begin(f"Exporting run {card.get('run')} as {fmt}")
    with torch.inference_mode():
        expected = model(torch.from_numpy(batch)).numpy()
    meta = card_metadata(card)
    if fmt == "onnx":
        atomic_write(path, lambda tmp: _write_onnx(model, prep, meta, tmp), mode=0o644)
        got = run_onnx(path, batch)
    else:
        atomic_write(path, lambda tmp: _write_torchscript(model, prep, meta, tmp), mode=0o644)
        got = run_torchscript(path, batch)
    progress.end()
    diff = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("inf")
    if not diff <= PARITY_TOLERANCE:
        path.unlink(missing_ok=True)
        raise TrainingError(
            f"the {fmt} file gives probabilities up to {diff:.3g} away from the torch model "
            f"(tolerance {PARITY_TOLERANCE}); it was not kept."
        )
    return ExportResult(
        path=path,
        format=fmt,
        run=card.get("run"),
        labels=list(card["labels"]),
        max_abs_diff=diff,
        samples=int(batch.shape[0]),
        seconds=time.perf_counter() - started,
    )


def _example(prep: Preprocessing) -> torch.Tensor:
    return torch.from_numpy(sample_batch(prep, count=2))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # The exporters' deprecation notices about their own future are not the user's concern.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _write_onnx(model: ProbabilityModel, prep: Preprocessing, meta: str, path: Path) -> None:
    import onnx

    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The exporters' notices about their own future are not the user's concern.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (_example(prep),),
            buffer,  # type: ignore[arg-type]  # the TorchScript-based exporter takes a file
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key = CARD_KEY
    entry.value = meta
    proto.producer_name = "annotate2model"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _write_torchscript(model: ProbabilityModel, prep: Preprocessing, meta: str, path: Path) -> None:
    # Checked by export_run as the saved file, like the ONNX graph.
    with _quiet(), torch.no_grad():
        script = torch.jit.trace(  # type: ignore[no-untyped-call]
            model.eval(), (_example(prep),), check_trace=False
        )
        torch.jit.save(script, str(path), _extra_files={CARD_KEY: meta})


def run_onnx(path: Path, batch: NDArray[np.uint8]) -> NDArray[np.float32]:
    """The ONNX file's probabilities for `batch` under onnxruntime (CPU)."""
    session = open_session(path, ["CPUExecutionProvider"])
    out = session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.uint8)})[0]
    return np.asarray(out, dtype=np.float32)


def run_torchscript(path: Path, batch: NDArray[np.uint8]) -> NDArray[np.float32]:
    """The TorchScript file's probabilities for `batch` (loaded as a user would, on the CPU)."""
    with _quiet():
        loaded = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    with torch.inference_mode():
        out = loaded(torch.from_numpy(batch))
    return np.asarray(out.numpy(), dtype=np.float32)


def read_torchscript_card(path: Path) -> dict[str, Any]:
    extra = {CARD_KEY: ""}
    with _quiet():
        torch.jit.load(  # type: ignore[no-untyped-call]
            str(path), map_location="cpu", _extra_files=extra
        )
    card: dict[str, Any] = json.loads(extra[CARD_KEY])
    return card
