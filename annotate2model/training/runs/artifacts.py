"""A run's folder: weights as safetensors, `model.json` that rebuilds the model, `history.csv`.

Every file is written to a temporary name and renamed, so a killed process leaves the old file or
the new one. Loading reads safetensors and JSON only: nothing is ever unpickled.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from annotate2model.errors import NotFoundError, TrainingError
from annotate2model.fsutil import atomic_write, atomic_write_bytes
from annotate2model.training.features.tensors import Tensors, read_tensors, write_tensors

FORMAT = "a2m-model/1"
TRUNK_FILE = "trunk.safetensors"
HEAD_FILE = "head.safetensors"
CARD_FILE = "model.json"
HISTORY_FILE = "history.csv"

if TYPE_CHECKING:
    import torch


def write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=0o644)


def link_or_copy(source: Path, target: Path) -> None:
    """Put `source` at `target` (a hard link when possible: the cached trunk costs no space)."""

    def write(tmp: Path) -> None:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)

    atomic_write(target, write)


def history_csv(history: list[dict[str, Any]]) -> str:
    columns = [
        "epoch",
        "lr",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "seconds",
        "train_images",
        # A probe's head: the regularisation of this fit of the grid, and the fit that was kept.
        "C",
        "kept",
    ]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow(row)
    return out.getvalue()


def write_run_files(
    run_dir: Path,
    card: dict[str, Any],
    head: Tensors | None,
    trunk: Tensors | Path | None,
    history: list[dict[str, Any]],
) -> None:
    """Weights first, the card last: a folder with a model.json always has its weights."""
    if isinstance(trunk, Path):
        link_or_copy(trunk, run_dir / TRUNK_FILE)
    elif trunk is not None:
        write_tensors(run_dir / TRUNK_FILE, trunk)
    if head is not None:
        write_tensors(run_dir / HEAD_FILE, head)
    write_text(run_dir / HISTORY_FILE, history_csv(history))
    write_text(run_dir / CARD_FILE, json.dumps({"format": FORMAT, **card}, indent=2) + "\n")


def read_card(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CARD_FILE
    try:
        card: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotFoundError(
            f"{path} is missing: the run did not finish, or its folder was removed."
        ) from None
    except json.JSONDecodeError as exc:
        raise TrainingError(f"{path} is not valid JSON ({exc}).") from None
    if card.get("format") != FORMAT:
        raise TrainingError(f"{path} has format {card.get('format')!r}, expected {FORMAT}.")
    return card


def load_classifier(run_dir: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a trained classifier from its folder (architecture from the card, safetensors)."""
    import torch

    from annotate2model.training.features.backbones import Classifier, build_trunk

    card = read_card(run_dir)
    if card.get("kind") != "classifier":
        raise TrainingError(f"{run_dir} holds a {card.get('kind')}, not a single classifier.")
    trunk = build_trunk(card["architecture"])
    trunk.load_state_dict(read_tensors(run_dir / TRUNK_FILE), strict=True)
    head_state = read_tensors(run_dir / HEAD_FILE)
    head = torch.nn.Linear(card["feature_dim"], len(card["labels"]))
    head.load_state_dict(head_state, strict=True)
    return Classifier(trunk, head).eval(), card
