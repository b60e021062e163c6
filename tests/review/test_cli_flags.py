"""`a2m flags` on a real store: the listing, its JSON, precision per run; `a2m flag` refuses
unknown reasons before touching anything."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from typer.testing import CliRunner

from annotate2model.store import Store
from annotate2model.store.flags import mark_pushed, record_flags, resolve_flags
from annotate2model.store.models import Task
from tests.conftest import run_cli
from tests.review.test_store_flags import PROJECT, _flags, _setup

pytestmark = pytest.mark.both_dialects


def test_flags_lists_outcomes_and_precision(cli: CliRunner, store: Store) -> None:
    code, out, _ = run_cli(cli, "flags")
    assert code == 0 and "No flags yet" in out
    run, rows = _setup(store)
    with store.write() as session:
        flags = record_flags(session, run, _flags(rows))
        mark_pushed(session, [f.id for f in flags[:2]], review_field="f", view_id=1)
        session.get(Task, rows[0]).label = "bee"  # type: ignore[union-attr]
        resolve_flags(session, PROJECT)
    code, out, err = run_cli(cli, "flags", str(run))
    assert code == 0, err
    assert "relabeled" in out and "pending" in out and "not pushed" in out
    assert f"Run {run}: 1 flag(s) resolved, 1 relabeled: precision 1.00." in out
    code, out, _ = run_cli(cli, "flags", "--json")
    body = json.loads(out)
    assert [f["outcome"] for f in body["flags"]] == ["relabeled", "pending", "not pushed"]
    assert body["flags"][0]["label_now"] == "bee" and body["flags"][0]["task"] == 10
    assert body["precision"] == {str(run): {"resolved": 1, "relabeled": 1, "precision": 1.0}}
    code, _, err = run_cli(cli, "flags", "99")
    assert code == 1 and "no run 99" in err


def test_flag_refuses_an_unknown_reason(cli: CliRunner, store: Store) -> None:
    code, _, err = run_cli(cli, "flag", "1", "--reasons", "misclassified,typo")
    assert code == 1 and "'typo'" in err and "label-issue" in err


def test_flag_times_the_push_as_the_push_and_the_command_as_the_whole(
    cli: CliRunner, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The push took 1.3 s of a 21 s `a2m flag`: the line names the push's time as the push's,
    and its total is the whole command (here a flag_run that spends 0.4 s before its push)."""
    from annotate2model.cli import review
    from annotate2model.labelstudio.flags import PushResult
    from annotate2model.review import flagging

    class Client:
        def __enter__(self) -> Client:
            return self

        def __exit__(self, *_: object) -> None:
            pass

    def flag_run(*_: Any, **__: Any) -> flagging.FlagOutcome:
        time.sleep(0.4)  # judging the run, finding label issues
        return flagging.FlagOutcome(
            run=2,
            project=1,
            found={"misclassified": 3},
            flagged=3,
            without_task=0,
            push=PushResult(predictions_added=3, seconds=0.01),
        )

    monkeypatch.setattr(review, "_connected", lambda _ctx: (1, Client()))
    monkeypatch.setattr(flagging, "flag_run", flag_run)
    code, out, err = run_cli(cli, "flag", "2")
    assert code == 0, err
    text = " ".join(out.split())
    assert "3 prediction(s) added" in text
    assert "Sending them to Label Studio took 0.0 s;" in text
    total = re.search(r"; (\d+\.\d) s in all\.", text)
    assert total and float(total.group(1)) >= 0.4, text
    assert " in 0.0 s" not in text  # no time left unnamed
