"""Classification metrics from labels and probabilities, as plain JSON-ready dicts (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray


def classification_metrics(
    targets: NDArray[Any], probs: NDArray[Any], labels: list[str]
) -> dict[str, Any]:
    """Accuracy, macro/weighted precision-recall-F1, per-class report, confusion matrix, top-k."""
    n_classes = len(labels)
    n = int(targets.shape[0])
    if n == 0:
        return {"n": 0}
    predicted = probs.argmax(axis=1)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (targets, predicted), 1)
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1).astype(np.float64)
    predicted_count = confusion.sum(axis=0).astype(np.float64)
    precision = np.divide(tp, predicted_count, out=np.zeros_like(tp), where=predicted_count > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
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
