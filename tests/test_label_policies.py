"""Label policies, one test per policy and per tie rule (pure functions: no server, no store)."""

from __future__ import annotations

import pytest

from annotate2model.labelstudio.policies import (
    POLICIES,
    Answer,
    Resolution,
    ground_truth,
    latest,
    majority,
    resolve_label,
)

LABELS = ("cat", "dog", "owl")


def a(
    aid: int,
    label: str | None,
    at: str,
    *,
    cancelled: bool = False,
    truth: bool = False,
    problem: str | None = None,
) -> Answer:
    return Answer(
        annotation_id=aid,
        label=label,
        updated_at=f"2026-11-20T10:{at}Z",
        was_cancelled=cancelled,
        ground_truth=truth,
        problem=problem,
    )


def test_latest_takes_the_most_recently_updated_answer_not_the_highest_id() -> None:
    # Annotation 1 was edited after 2 was made: its update time counts, not its id.
    answers = [a(1, "dog", "05:00"), a(2, "cat", "03:00")]
    assert latest(answers) == "dog"
    assert resolve_label(answers, "latest", LABELS) == Resolution(label="dog")


def test_latest_tie_on_time_goes_to_the_higher_id() -> None:
    answers = [a(7, "dog", "01:00"), a(9, "cat", "01:00"), a(8, "owl", "01:00")]
    assert latest(answers) == "cat"


def test_majority_takes_the_most_frequent_label_even_when_older() -> None:
    answers = [a(1, "dog", "01:00"), a(2, "dog", "02:00"), a(3, "cat", "09:00")]
    assert majority(answers) == "dog"
    assert resolve_label(answers, "majority", LABELS).label == "dog"
    assert resolve_label(answers, "latest", LABELS).label == "cat"


def test_majority_tie_goes_to_the_most_recent_of_the_tied_labels() -> None:
    # dog and cat tie at two; owl is the latest answer of all but not among the tied.
    answers = [
        a(1, "dog", "01:00"),
        a(2, "cat", "02:00"),
        a(3, "dog", "05:00"),
        a(4, "cat", "04:00"),
        a(5, "owl", "09:00"),
        a(6, "cow", "09:30"),
    ]
    # Counts: dog 2, cat 2, owl 1, cow 1; the latest of dog/cat is dog (05:00).
    assert majority(answers) == "dog"


def test_majority_tie_on_time_too_goes_to_the_higher_id() -> None:
    answers = [a(10, "dog", "01:00"), a(11, "cat", "01:00")]
    assert majority(answers) == "cat"


def test_ground_truth_beats_later_answers() -> None:
    answers = [a(1, "dog", "01:00", truth=True), a(2, "cat", "05:00")]
    assert ground_truth(answers) == "dog"
    assert resolve_label(answers, "ground-truth", LABELS).label == "dog"


def test_ground_truth_among_several_flagged_the_latest_flagged_wins() -> None:
    answers = [
        a(1, "dog", "01:00", truth=True),
        a(2, "owl", "03:00", truth=True),
        a(3, "cat", "09:00"),
    ]
    assert ground_truth(answers) == "owl"


def test_ground_truth_without_any_flag_falls_back_to_latest() -> None:
    answers = [a(1, "dog", "01:00"), a(2, "cat", "05:00")]
    assert ground_truth(answers) == "cat"


def test_ground_truth_flag_on_a_cancelled_answer_does_not_count() -> None:
    answers = [a(1, "dog", "09:00", cancelled=True, truth=True), a(2, "cat", "01:00")]
    assert resolve_label(answers, "ground-truth", LABELS).label == "cat"


@pytest.mark.parametrize("policy", POLICIES)
def test_no_answers_is_unlabeled_without_a_problem(policy: str) -> None:
    assert resolve_label([], policy, LABELS) == Resolution()  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", POLICIES)
def test_only_cancelled_answers_is_a_skipped_task(policy: str) -> None:
    answers = [a(1, None, "01:00", cancelled=True), a(2, "dog", "02:00", cancelled=True)]
    got = resolve_label(answers, policy, LABELS)  # type: ignore[arg-type]
    assert got.label is None and got.problem == "skipped: every annotation was cancelled"


@pytest.mark.parametrize("policy", POLICIES)
def test_cancelled_answers_are_ignored_beside_real_ones(policy: str) -> None:
    answers = [a(1, "dog", "01:00"), a(2, "cat", "09:00", cancelled=True)]
    assert resolve_label(answers, policy, LABELS).label == "dog"  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", POLICIES)
def test_an_empty_answer_that_was_not_cancelled_leaves_the_task_unlabeled(policy: str) -> None:
    got = resolve_label([a(1, None, "01:00")], policy, LABELS)  # type: ignore[arg-type]
    assert got == Resolution()


@pytest.mark.parametrize("policy", POLICIES)
def test_a_label_outside_the_config_is_a_problem(policy: str) -> None:
    got = resolve_label([a(1, "zebra", "01:00")], policy, LABELS, "species")  # type: ignore[arg-type]
    assert got.label is None
    assert got.problem == "label outside config: 'zebra' is not a choice of 'species'"


def test_an_answer_with_several_choices_is_ignored_and_alone_is_a_problem() -> None:
    several = a(2, None, "09:00", problem="several choices ('cat', 'dog') in one answer")
    assert resolve_label([a(1, "owl", "01:00"), several], "latest", LABELS).label == "owl"
    got = resolve_label([several], "latest", LABELS)
    assert got.label is None
    assert got.problem == "ambiguous: annotation 2 has several choices ('cat', 'dog') in one answer"


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown label policy"):
        resolve_label([a(1, "dog", "01:00")], "newest", LABELS)  # type: ignore[arg-type]
