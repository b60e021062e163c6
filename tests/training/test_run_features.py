"""One engine extracts features: torch runs the torchvision trunk. A run's cached features are
the features of a fresh torchvision build of the same weights, within float rounding; a probe
evaluated with its features computed again gives the probabilities its training recorded."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from annotate2model.store import Store
from annotate2model.store import runs as store_runs
from annotate2model.training.context import RunContext
from annotate2model.training.features.backbones import (
    build_trunk,
    load_state_dict,
    trunk_state_from,
)
from annotate2model.training.features.embeddings import torch_network
from annotate2model.training.features.images import load_image
from annotate2model.training.features.weights import resolve_weights
from annotate2model.training.runs import runner
from tests.training.conftest import small_config

pytestmark = pytest.mark.training

CPU = torch.device("cpu")


def _torchvision_trunk(weights: Path) -> torch.nn.Module:
    source = resolve_weights("resnet18", str(weights), 0)
    state = load_state_dict("resnet18", source)
    assert state is not None
    trunk = build_trunk("resnet18")
    trunk.load_state_dict(trunk_state_from("resnet18", state, str(weights), trunk))
    return trunk.eval()


def test_a_runs_features_equal_torchvisions(store: Store, version1: Path, weights: Path) -> None:
    """The features a CPU fp32 run cached are a fresh torchvision build's, within 1e-4 of their
    scale."""
    outcome = runner.train(store, small_config(weights, precision="fp32"))
    assert outcome.run.status == "succeeded"
    paths = sorted(version1.rglob("*.png"))[:6]
    shas = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    ctx = RunContext.from_store(store)
    prep = runner.load_predictor(ctx, outcome.run).prep
    cache = ctx.embedding_cache()
    try:
        # One run, one trunk: one model key in the cache.
        with sqlite3.connect(cache.path) as conn:
            (key,) = {row[0] for row in conn.execute("SELECT DISTINCT model_key FROM vectors")}
        cached = cache.get(key, shas)
    finally:
        cache.close()
    assert set(cached) == set(shas)
    expected = torch_network(_torchvision_trunk(weights), prep, CPU, False)(
        np.stack([load_image(p, prep) for p in paths])
    )
    scale = float(np.abs(expected).max())
    for i, sha in enumerate(shas):
        assert np.allclose(cached[sha], expected[i], rtol=1e-4, atol=1e-4 * scale)


def test_evaluating_with_features_computed_again_gives_the_recorded_probabilities(
    store: Store, version1: Path, weights: Path
) -> None:
    outcome = runner.train(store, small_config(weights, precision="fp32"))
    with store.read() as session:
        recorded = {
            p.image_sha256: p.probs
            for p in store_runs.read_predictions(session, outcome.run.id)
            if p.split == "val"
        }
    # The run's features are cached: drop them, so that the evaluation computes them again.
    db = store.settings.workspace.cache_dir / "embeddings" / "embeddings.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM vectors")
    evaluation = runner.evaluate_run(store, outcome.run.id, split="val")
    with store.read() as session:
        again = {
            p.image_sha256: p.probs
            for p in store_runs.read_predictions(session, outcome.run.id)
            if p.split == "val"
        }
    assert set(again) == set(recorded) and evaluation.metrics.n == len(recorded)
    for sha, probs in recorded.items():
        assert np.allclose(again[sha], probs, atol=1e-5)
