"""`a2m train --help` says what each unset option becomes when fine-tuning, and that a probe's
head is fitted without them (from the config itself)."""

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
    for field in ("epochs", "lr", "optimizer", "schedule", "early_stopping", "warmup_epochs"):
        assert f"{finetune[field]} (fine-tuning only; a probe's head is fitted by L-BFGS)" in shown
    assert "resnet18-frozen-sgd" in shown
    assert f"Default: {RunConfig.batch_size}." in shown
    for flag in ("--block-lr-scale", "--head-init", "--warmup-epochs"):
        assert flag in shown
