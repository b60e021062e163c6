"""Flagging runs a run through its Predictor: an uncertain task's score comes from
`Predictor.predict`, and label issues are found on `Predictor.features` (a probe's from the
embedding cache its training filled, a fine-tuned run's cached under its own key)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from annotate2model.progress import NullProgress
from annotate2model.review.flagging import find_doubts, run_features
from annotate2model.review.ranking import Scored, uncertain
from annotate2model.store import Store
from annotate2model.store.imports import import_folder
from annotate2model.store.models import Task
from annotate2model.store.runs import get_run
from annotate2model.store.versions import version_items
from annotate2model.training import Predictor, RunContext
from annotate2model.training.runs import artifacts, runner
from tests.training.conftest import make_split_folder, small_config

pytestmark = pytest.mark.training

PROJECT = 7


@pytest.mark.parametrize("mode", ["probe", "finetune"])
def test_flagging_takes_the_predictors_probabilities_and_features(
    store: Store, scenes_weights: Path, tmp_path: Path, mode: str
) -> None:
    folder = make_split_folder(tmp_path / "data", {"ants": 8, "bees": 8}, {"ants": 3, "bees": 3})
    import_folder(store, folder)
    config = small_config(scenes_weights, mode=mode, epochs=2, workers=0, precision="fp32")
    run_id = runner.train(store, config).run.id
    ctx = dataclasses.replace(RunContext.from_store(store), device="cpu")
    with store.read() as session:
        run = get_run(session, run_id)
        shas = sorted({i.image_sha256 for i in version_items(session, run.version)})
    # The same images as unlabeled tasks of a project: each is an uncertain doubt.
    with store.write() as session:
        session.add_all(
            Task(
                project_id=PROJECT,
                task_id=n,
                image_sha256=sha,
                label=None,
                synced_at=datetime.now(UTC),
            )
            for n, sha in enumerate(shas)
        )

    # The Predictor, loaded apart and run without a cache (the features computed afresh).
    predictor = Predictor.load(ctx.run_dir(run_id), "cpu")
    assert isinstance(predictor, Predictor)
    paths = [store.blobs.path(s) for s in shas]
    probs = predictor.predict(paths).probs
    expected = {
        d.image_sha256: d
        for d in uncertain(
            [Scored(s, None, [float(v) for v in probs[i]]) for i, s in enumerate(shas)],
            predictor.labels,
        )
    }
    doubts = find_doubts(store, run_id, ["uncertain"], project_id=PROJECT, context=ctx)
    assert {d.image_sha256 for d in doubts} == set(expected) == set(shas)
    for d in doubts:
        assert d.score == pytest.approx(expected[d.image_sha256].score, abs=1e-4)
        assert d.suggested_label == expected[d.image_sha256].suggested_label

    features = run_features(ctx, run, shas, NullProgress())
    fresh = predictor.features(paths)
    assert not fresh.errors and fresh.rows.shape[0] == len(shas)
    assert np.allclose(np.stack([features[s] for s in shas]), fresh.rows, atol=1e-4)
    cache = ctx.embedding_cache()
    try:
        card = artifacts.read_card(ctx.run_dir(run_id))
        # A probe's features are those its training cached; a fine-tuned run's are its own.
        key = card["embedding_key"] if mode == "probe" else predictor.features_key
        assert predictor.features_key == key
        cached = cache.get(key, shas)
    finally:
        cache.close()
    assert set(cached) == set(shas)
    assert all(np.array_equal(cached[s], features[s]) for s in shas)
