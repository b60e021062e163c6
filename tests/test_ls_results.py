"""Label Studio result JSON: what collect and flag-back build parses back; malformed ones do not
pass for a label."""

from __future__ import annotations

import json

import pytest

from annotate2model.labelstudio.config import LabelingConfig, build_label_config
from annotate2model.labelstudio.config import parse_label_config as parse_config
from annotate2model.labelstudio.results import (
    Choice,
    annotation,
    parse_annotation,
    prediction,
    read_choice,
)

CONFIG = LabelingConfig(image_field="photo", from_name="species", to_name="img", labels=("a", "b"))


def test_annotation_shape_is_what_label_studio_imports() -> None:
    built = annotation(CONFIG, "b")
    assert built == {
        "result": [
            {
                "from_name": "species",
                "to_name": "img",
                "type": "choices",
                "value": {"choices": ["b"]},
            }
        ],
        # Always explicit: Label Studio's import default would make it ground truth.
        "ground_truth": False,
    }
    assert annotation(CONFIG, "a", ground_truth=True)["ground_truth"] is True


def test_prediction_carries_model_version_and_score() -> None:
    built = prediction(CONFIG, "a", model_version="run-12", score=0.875)
    assert built["model_version"] == "run-12" and built["score"] == 0.875
    assert built["result"] == annotation(CONFIG, "a")["result"]
    assert "score" not in prediction(CONFIG, "a", model_version="folders")
    # What sync reads of a result reads the suggested label back.
    assert read_choice(json.loads(json.dumps(built))["result"], "species").label == "a"


@pytest.mark.parametrize("ground_truth", [False, True])
def test_annotation_round_trip_through_the_server_shape(ground_truth: bool) -> None:
    # What Label Studio answers for an imported annotation: ours plus its own keys.
    answered = {
        **annotation(CONFIG, "a", ground_truth=ground_truth),
        "id": 41,
        "was_cancelled": False,
        "completed_by": {"id": 3, "email": "x@y"},
        "created_at": "2026-11-20T10:00:00.1Z",
        "updated_at": "2026-11-20T10:05:00.2Z",
    }
    parsed = parse_annotation(json.loads(json.dumps(answered)), "species")
    assert parsed.label == "a" and parsed.choice.problem is None
    assert parsed.ground_truth is ground_truth and not parsed.was_cancelled
    assert parsed.annotation_id == 41 and parsed.completed_by == 3
    assert parsed.updated_at == "2026-11-20T10:05:00.2Z"
    assert json.loads(parsed.result_json) == answered["result"]


def test_round_trip_with_the_config_collect_builds() -> None:
    config = parse_config(build_label_config(["cat", "dog"]))
    raw = {"id": 1, **annotation(config, "dog")}
    assert parse_annotation(raw, config.from_name).label == "dog"


def test_never_updated_annotation_uses_its_creation_time() -> None:
    raw = {"id": 2, "result": [], "created_at": "2026-11-20T09:00:00Z", "updated_at": None}
    assert parse_annotation(raw, "species").updated_at == "2026-11-20T09:00:00Z"


def test_cancelled_annotation_has_no_label() -> None:
    raw = {"id": 3, "result": [], "was_cancelled": True, "created_at": "2026-11-20T09:00:00Z"}
    parsed = parse_annotation(raw, "species")
    assert parsed.was_cancelled and parsed.label is None and parsed.choice.problem is None
    assert parsed.result_json == "[]"


def test_several_choices_are_no_label_and_say_why() -> None:
    result = [
        {"from_name": "species", "type": "choices", "value": {"choices": ["a", "b"]}},
    ]
    choice = read_choice(result, "species")
    assert choice.choices == ("a", "b") and choice.label is None
    assert choice.problem == "several choices ('a', 'b') in one answer"
    # Two regions of the same control choosing different labels: several choices too.
    split = [
        {"from_name": "species", "value": {"choices": ["a"]}},
        {"from_name": "species", "value": {"choices": ["b"]}},
    ]
    assert read_choice(split, "species").choices == ("a", "b")
    # The same label twice is still one choice.
    twice = [
        {"from_name": "species", "value": {"choices": ["a"]}},
        {"from_name": "species", "value": {"choices": ["a"]}},
    ]
    assert read_choice(twice, "species").label == "a"


@pytest.mark.parametrize(
    "result",
    [
        None,
        {},
        "a",
        [],
        ["a"],
        [{"from_name": "species"}],
        [{"from_name": "species", "value": None}],
        [{"from_name": "species", "value": {}}],
        [{"from_name": "species", "value": {"choices": []}}],
        [{"from_name": "species", "value": {"choices": "a"}}],
        [{"from_name": "species", "value": {"choices": [None, True, {"x": 1}]}}],
        [{"from_name": "species", "value": {"labels": ["a"]}}],
        # Another control's choice is not ours.
        [{"from_name": "mood", "value": {"choices": ["a"]}}],
    ],
)
def test_malformed_or_foreign_results_give_no_label(result: object) -> None:
    assert read_choice(result, "species") == Choice()
    raw = {"id": 5, "result": result, "created_at": "2026-11-20T09:00:00Z"}
    assert parse_annotation(raw, "species").label is None


def test_numbers_as_choices_are_read_as_text() -> None:
    assert read_choice([{"from_name": "n", "value": {"choices": [3]}}], "n").label == "3"
