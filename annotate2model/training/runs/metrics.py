"""Classification metrics from labels and probabilities (scikit-learn's), and their typed forms."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray


def classification_metrics(
    targets: NDArray[Any], probs: NDArray[Any], labels: list[str]
) -> dict[str, Any]:
    """Accuracy, macro/weighted precision-recall-F1, per-class report, confusion matrix, top-k.
    Macro averages are over the classes present among `targets`."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    n_classes = len(labels)
    n = int(targets.shape[0])
    if n == 0:
        return {"n": 0}
    predicted = probs.argmax(axis=1)
    classes = np.arange(n_classes)
    confusion = confusion_matrix(targets, predicted, labels=classes)
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predicted, labels=classes, zero_division=0
    )
    weights = support / support.sum()
    present = support > 0
    order = np.argsort(-probs, axis=1)
    top_k = {}
    for k in (1, 3, 5):
        if k == 1 or k < n_classes:
            hits = (order[:, :k] == targets[:, None]).any(axis=1)
            top_k[f"top{k}"] = float(hits.mean())
    eps = 1e-12
    log_loss = float(-np.log(np.clip(probs[np.arange(n), targets], eps, 1.0)).mean())
    return {
        "n": n,
        "accuracy": float((predicted == targets).mean()),
        "loss": log_loss,
        "macro": {
            "precision": float(precision[present].mean()),
            "recall": float(recall[present].mean()),
            "f1": float(f1[present].mean()),
        },
        "weighted": {
            "precision": float((precision * weights).sum()),
            "recall": float((recall * weights).sum()),
            "f1": float((f1 * weights).sum()),
        },
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion": confusion.tolist(),
        "top_k": top_k,
    }


@dataclass(frozen=True)
class ClassMetrics:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Averages:
    precision: float
    recall: float
    f1: float


@dataclass(frozen=True)
class SplitMetrics:
    """How a model did on one split: what `classification_metrics` computes, typed."""

    n: int
    accuracy: float | None = None
    # Mean negative log-likelihood of the true class.
    loss: float | None = None
    macro: Averages | None = None
    weighted: Averages | None = None
    per_class: dict[str, ClassMetrics] = field(default_factory=dict)
    # Rows: true label, columns: predicted label, in label order.
    confusion: list[list[int]] = field(default_factory=list)
    top_k: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SplitMetrics:
        def averages(value: Any) -> Averages | None:
            return Averages(**value) if isinstance(value, dict) else None

        return cls(
            n=int(data.get("n", 0)),
            accuracy=data.get("accuracy"),
            loss=data.get("loss"),
            macro=averages(data.get("macro")),
            weighted=averages(data.get("weighted")),
            per_class={k: ClassMetrics(**v) for k, v in (data.get("per_class") or {}).items()},
            confusion=[list(row) for row in data.get("confusion") or []],
            top_k=dict(data.get("top_k") or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        if self.accuracy is None:
            return {"n": self.n}
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """The figures a model card keeps per split."""
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "loss": self.loss,
            "macro_f1": self.macro.f1 if self.macro else None,
        }


@dataclass(frozen=True)
class Timing:
    # Wall time of the training itself (from the run row's creation to the model saved).
    seconds: float
    # What the embedding cache did (probes): ExtractionStats as a dict.
    extraction: dict[str, Any] | None = None


@dataclass(frozen=True)
class RunMetrics:
    """A run's metrics per split; stored in the ledger as `to_dict()` (a stable JSON shape)."""

    splits: dict[str, SplitMetrics]
    timing: Timing | None = None

    @property
    def val_accuracy(self) -> float | None:
        val = self.splits.get("val")
        return val.accuracy if val else None

    @property
    def test_accuracy(self) -> float | None:
        test = self.splits.get("test")
        return test.accuracy if test else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "splits": {name: m.to_dict() for name, m in self.splits.items()},
            # The model-selection figure (validation accuracy), kept flat for listings.
            "accuracy": self.val_accuracy,
            "val_accuracy": self.val_accuracy,
            "test_accuracy": self.test_accuracy,
            "timing": asdict(self.timing) if self.timing else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunMetrics:
        timing = data.get("timing")
        return cls(
            splits={k: SplitMetrics.from_dict(v) for k, v in (data.get("splits") or {}).items()},
            timing=Timing(**timing) if isinstance(timing, dict) else None,
        )
