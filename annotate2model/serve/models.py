"""The models a server holds: a run through its Predictor, or its ONNX export on ONNX Runtime.

Both take what the server has after decoding, a batch of centre-cropped uint8 RGB images
(N, crop, crop, 3), and return class probabilities (N, classes). They are loaded once, at start-up.
Importing this module loads neither torch nor onnxruntime; `OnnxModel` never loads torch, so a
server of ONNX files has no torch in its request path (nor in its process).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from annotate2model.errors import InputError, NotFoundError
from annotate2model.training.features.images import Preprocessing
from annotate2model.training.runs.onnx_file import CARD_KEY, INPUT_NAME, OUTPUT_NAME, open_session

if TYPE_CHECKING:
    from annotate2model.training.runs.predictor import EnsemblePredictor, Predictor

# Images per forward pass: requests that arrive together are run together, up to this many.
DEFAULT_MAX_BATCH = 32


class ServedModel:
    """What the server knows of a loaded model, whichever runtime runs it."""

    engine: str
    device: str
    card: dict[str, Any]
    # False: the server decodes images beside this model's passes on lower-priority threads.
    yields_to_decoding = True

    def forward(self, images: NDArray[np.uint8]) -> NDArray[np.float32]:
        """Probabilities (N, classes) for uint8 images (N, crop, crop, 3)."""
        raise NotImplementedError

    @property
    def labels(self) -> list[str]:
        return list(self.card["labels"])

    @property
    def prep(self) -> Preprocessing:
        p = self.card["preprocessing"]
        return Preprocessing(int(p["resize"]), int(p["crop"]))

    @property
    def run_id(self) -> int | None:
        run = self.card.get("run")
        return int(run) if run is not None else None

    @property
    def model_version(self) -> str:
        """The version Label Studio stores with each prediction (one per run)."""
        return f"a2m-run-{self.run_id}" if self.run_id is not None else "a2m-model"

    def describe(self) -> dict[str, Any]:
        """The run, its labels, dataset version and metrics, and how it is served."""
        config = self.card.get("config") or {}
        return {
            "run": self.run_id,
            "model_version": self.model_version,
            "kind": self.card.get("kind"),
            "architecture": self.card.get("architecture") or config.get("backbone"),
            "members": self.card.get("members"),
            "labels": self.labels,
            "dataset_version": self.card.get("version"),
            "image_size": self.prep.crop,
            "metrics": self.card.get("metrics") or {},
            "engine": self.engine,
            "device": self.device,
        }


class TorchModel(ServedModel):
    """A run folder served through its Predictor (an ensemble's members averaged)."""

    engine = "torch"
    # OpenMP's threads wait at each layer's barrier for a thread a decoder has preempted.
    yields_to_decoding = False

    def __init__(self, predictor: Predictor | EnsemblePredictor) -> None:
        self.predictor = predictor
        prep = predictor.prep
        self.card = {**predictor.card, "labels": predictor.labels, "preprocessing": prep.as_dict()}
        self.device = str(predictor.device)
        # One forward pass at a time: a second caller (a test, a warm-up) waits its turn.
        self._lock = threading.Lock()

    @classmethod
    def load(cls, run_dir: Path, device: str = "auto") -> TorchModel:
        from annotate2model.training.runs.predictor import Predictor

        model = cls(Predictor.load(run_dir, device))
        # Builds the network now, at start-up, rather than on the first request.
        model.forward(np.zeros((1, model.prep.crop, model.prep.crop, 3), dtype=np.uint8))
        return model

    def forward(self, images: NDArray[np.uint8]) -> NDArray[np.float32]:
        with self._lock:
            return self.predictor.forward(images)


class OnnxModel(ServedModel):
    """An exported ONNX file on ONNX Runtime (CUDA when the runtime has it and it is asked for)."""

    engine = "onnxruntime"

    def __init__(self, session: Any, card: dict[str, Any], device: str) -> None:
        self.session = session
        self.card = card
        self.device = device

    @classmethod
    def load(cls, path: Path, device: str = "auto") -> OnnxModel:
        import onnxruntime  # type: ignore[import-untyped]

        if not path.is_file():
            raise NotFoundError(f"{path} does not exist.")
        available = onnxruntime.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") or device == "auto":
            if "CUDAExecutionProvider" in available:
                providers.insert(0, "CUDAExecutionProvider")
            elif device.startswith("cuda"):
                raise InputError(
                    "the CUDA device was asked for, but this ONNX Runtime has no CUDA provider "
                    f"(it has {', '.join(available)})."
                )
        session = open_session(path, providers)
        meta = session.get_modelmeta().custom_metadata_map
        if CARD_KEY not in meta:
            raise InputError(f"{path} was not exported by annotate2model (no {CARD_KEY} in it).")
        card: dict[str, Any] = json.loads(meta[CARD_KEY])
        used = session.get_providers()[0]
        model = cls(session, card, "cuda" if used == "CUDAExecutionProvider" else "cpu")
        model.forward(np.zeros((1, model.prep.crop, model.prep.crop, 3), dtype=np.uint8))
        return model

    def forward(self, images: NDArray[np.uint8]) -> NDArray[np.float32]:
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images)})[0]
        return np.asarray(out, dtype=np.float32)
