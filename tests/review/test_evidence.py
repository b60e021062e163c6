"""What `a2m flag` says before it sends anything: the expected precision of misclassified flags
from the noise cleanlab estimates and the run's held-out accuracy, and one warning when the run
is too weak for its flags to be mostly wrong labels."""

from __future__ import annotations

import pytest

from annotate2model.review.flagging import ACCURACY_BAR, Evidence


def test_a_strong_run_expects_the_noise_over_its_errors() -> None:
    evidence = Evidence(
        training_images=1000, estimated_wrong=50, held_out_accuracy=0.94, held_out_images=200
    )
    # 5% of labels wrong, 6% of held-out images misclassified: about 5/6 are wrong labels.
    assert evidence.expected_precision == pytest.approx(0.05 / 0.06)
    assert evidence.warning() is None
    perfect = Evidence(training_images=10, estimated_wrong=0, held_out_accuracy=1.0)
    assert perfect.expected_precision == 1.0


def test_a_weak_run_is_warned_about_and_promises_nothing() -> None:
    # The case: a 74%-accurate run, whose flags were 22 of 23 false alarms.
    evidence = Evidence(
        training_images=245, estimated_wrong=60, held_out_accuracy=0.74, held_out_images=70
    )
    assert evidence.expected_precision is None  # cleanlab's estimate counts its confusions
    warning = evidence.warning()
    assert warning is not None and "0.74" in warning and f"{ACCURACY_BAR:.2f}" in warning
    assert "26%" in warning and "13%" in warning and "fine-tuning" in warning
    assert "\n" not in warning


def test_without_features_or_held_out_images_nothing_is_claimed() -> None:
    assert Evidence().expected_precision is None and Evidence().warning() is None
    assert Evidence(held_out_accuracy=0.95).expected_precision is None
