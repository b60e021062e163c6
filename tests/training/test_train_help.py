"""`a2m train --help` says what each unset option becomes when fine-tuning, in a panel that says
a probe's head is fitted without them (from the config itself)."""

from __future__ import annotations

import os
import subprocess
import sys

from annotate2model.training.config import MODE_DEFAULTS, RunConfig


def test_train_help_shows_the_defaults_of_each_mode() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "annotate2model", "train", "--help"],
        env={**os.environ, "COLUMNS": "400", "TERM": "dumb", "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    finetune = MODE_DEFAULTS["finetune"]
    lines = shown.splitlines()
    start = next(i for i, line in enumerate(lines) if "Fine-tuning (a probe's head" in line)
    panel = lines[start : next(i for i in range(start, len(lines)) if line_ends(lines[i]))]
    for field in ("epochs", "lr", "optimizer", "schedule", "early_stopping", "warmup_epochs"):
        flag = "--" + field.replace("_", "-")
        row = next(line for line in panel if f"{flag} " in line)
        assert f"Default: {finetune[field]}." in row, row
    assert "resnet18-frozen-sgd" in shown
    assert f"Default: {RunConfig.batch_size}." in shown
    for flag in ("--block-lr-scale", "--head-init", "--warmup-epochs"):
        assert flag in shown


def line_ends(line: str) -> bool:
    """The bottom of a rich panel."""
    return line.startswith("╰")
