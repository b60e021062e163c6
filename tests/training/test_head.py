"""The probe's head trained in numpy (training/head.py): torch's loss, optimisers and training loop
reproduced without importing torch."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from torch import nn

from annotate2model.progress import NullProgress
from annotate2model.training import head, trainer
from annotate2model.training.config import RunConfig
from annotate2model.training.head import HeadFit, fit_head, probabilities
from tests.conftest import run_python

HISTORY_KEYS = {
    "epoch",
    "lr",
    "train_loss",
    "train_accuracy",
    "train_images",
    "val_loss",
    "val_accuracy",
    "seconds",
}


def blobs(
    n: int, n_val: int, dim: int, classes: int, seed: int = 0, spread: float = 1.0
) -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.float32], NDArray[np.int64]]:
    """Gaussian blobs around class centres, far from the origin and with uneven feature scales
    (as a trunk's pooled features): standardising matters."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 2
    scale = rng.uniform(0.1, 10, dim)

    def draw(rows: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        y = rng.integers(0, classes, rows)
        x = (centres[y] + spread * rng.normal(size=(rows, dim))) * scale + 5
        return x.astype(np.float32), y

    return *draw(n), *draw(n_val)


class Recording(NullProgress):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, Any]] = []

    def begin(self, description: str, total: float | None = None) -> None:
        self.calls.append(("begin", description, total))

    def advance(self, amount: float = 1.0, status: str | None = None) -> None:
        self.calls.append(("advance", amount, status))

    def end(self) -> None:
        self.calls.append(("end", None, None))


# --- the loss ---------------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.35])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cross_entropy_and_its_gradient_match_torch(
    weighted: bool, smoothing: float, dtype: torch.dtype
) -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(23, 5)) * 4
    targets = rng.integers(0, 5, 23)
    targets[targets == 3] = 1  # class 3 is never a target: its weight 0, as make_loss gives it
    weight = np.array([0.7, 2.5, 1.0, 0.0, 1.8]) if weighted else None

    loss, grad = head.cross_entropy(logits, targets, weight, smoothing)

    t = torch.tensor(logits, dtype=dtype, requires_grad=True)
    expected = nn.functional.cross_entropy(
        t,
        torch.tensor(targets),
        weight=None if weight is None else torch.tensor(weight, dtype=dtype),
        label_smoothing=smoothing,
    )
    (expected_grad,) = torch.autograd.grad(expected, t)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-6
    assert loss == pytest.approx(float(expected.detach()), abs=tolerance, rel=tolerance)
    np.testing.assert_allclose(grad, expected_grad.double().numpy(), atol=tolerance)


def test_cross_entropy_is_stable_for_huge_logits() -> None:
    logits = np.array([[1e4, -1e4, 0.0], [-3e4, 3e4, 2e4]])
    targets = np.array([1, 1])
    loss, grad = head.cross_entropy(logits, targets, None, 0.1)
    t = torch.tensor(logits, requires_grad=True)
    expected = nn.functional.cross_entropy(t, torch.tensor(targets), label_smoothing=0.1)
    (expected_grad,) = torch.autograd.grad(expected, t)
    assert math.isfinite(loss) and np.isfinite(grad).all()
    assert loss == pytest.approx(float(expected.detach()), rel=1e-12)
    np.testing.assert_allclose(grad, expected_grad.numpy(), atol=1e-12)


def test_class_weights_are_make_loss_weights() -> None:
    targets = [0, 0, 0, 1, 2, 2, 0, 2]
    config = RunConfig(class_weights=True)
    expected = trainer.make_loss(config, targets, 4, torch.device("cpu")).weight
    assert expected is not None
    np.testing.assert_allclose(
        head.class_weights(np.asarray(targets, dtype=np.intp), 4), expected.numpy(), rtol=1e-6
    )


# --- the optimisers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        RunConfig(optimizer="sgd", momentum=0.9, weight_decay=0.01),
        RunConfig(optimizer="sgd", momentum=0.0, weight_decay=0.0),
        RunConfig(optimizer="sgd", momentum=0.5, weight_decay=0.0),
        RunConfig(optimizer="adamw", weight_decay=0.05),
        RunConfig(optimizer="adamw", weight_decay=0.0),
    ],
    ids=["sgd-momentum-decay", "sgd-plain", "sgd-momentum", "adamw-decay", "adamw"],
)
def test_optimiser_steps_match_torch_optim(config: RunConfig) -> None:
    rng = np.random.default_rng(5)
    params = [rng.normal(size=(3, 7)), rng.normal(size=3)]
    tensors = [nn.Parameter(torch.tensor(p.copy())) for p in params]
    if config.optimizer == "adamw":
        reference: torch.optim.Optimizer = torch.optim.AdamW(
            tensors, lr=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=config.weight_decay
        )
    else:
        reference = torch.optim.SGD(
            tensors, lr=1.0, momentum=config.momentum, weight_decay=config.weight_decay
        )
    optimizer = head.HeadOptimizer(config, params)
    for lr in [0.1, 0.05, 0.3, 0.01, 0.07, 0.2, 0.002]:
        grads = [rng.normal(size=p.shape) for p in params]
        for t, g in zip(tensors, grads, strict=True):
            t.grad = torch.tensor(g)
        for group in reference.param_groups:
            group["lr"] = lr
        reference.step()
        optimizer.step(grads, lr)
        for p, t in zip(params, tensors, strict=True):
            np.testing.assert_allclose(p, t.detach().numpy(), rtol=1e-12, atol=1e-12)


# --- the training loop, against torch's -------------------------------------------------------


def torch_fit(
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    xv: NDArray[np.float32],
    yv: NDArray[np.int64],
    classes: int,
    config: RunConfig,
) -> tuple[list[dict[str, Any]], NDArray[np.float64], NDArray[np.float64]]:
    """trainer.fit as the torch probe ran it, from fit_head's standardisation, initial weights
    and batch order; the head it returns is folded back onto raw features."""
    mean, std = head.standardisation(x)
    xs = torch.from_numpy(head.standardised(x, mean, std))
    xvs = torch.from_numpy(head.standardised(xv, mean, std))
    init = np.random.default_rng(config.seed)
    bound = 1 / math.sqrt(x.shape[1])
    linear = nn.Linear(x.shape[1], classes)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(init.uniform(-bound, bound, (classes, x.shape[1]))))
        linear.bias.copy_(torch.tensor(init.uniform(-bound, bound, classes)))
    shuffle = np.random.default_rng([config.seed, 1])
    targets = torch.tensor(y)

    def train_batches(_epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.from_numpy(shuffle.permutation(len(y)))
        return [
            (xs[order[s : s + config.batch_size]], targets[order[s : s + config.batch_size]])
            for s in range(0, len(y), config.batch_size)
        ]

    cpu = torch.device("cpu")
    history = trainer.fit(
        linear,
        train_batches,
        lambda: [(xvs, torch.tensor(yv))],
        math.ceil(len(y) / config.batch_size),
        config,
        trainer.make_loss(config, y.tolist(), classes, cpu),
        cpu,
        False,
        per_epoch_bars=False,
    )
    weight = linear.weight.detach().double().numpy()
    bias = linear.bias.detach().double().numpy()
    return history, *head.fold(weight, bias, mean, std)


@pytest.mark.parametrize(
    "config",
    [
        RunConfig(),  # the probe's defaults: SGD with momentum, triangular2 cyclic, 10 epochs
        RunConfig(
            optimizer="adamw",
            schedule="cosine",
            lr=3e-3,
            weight_decay=0.02,
            warmup_epochs=1.0,
            label_smoothing=0.1,
            class_weights=True,
            epochs=6,
            batch_size=16,
            seed=7,
        ),
        RunConfig(
            optimizer="sgd",
            schedule="onecycle",
            weight_decay=1e-3,
            label_smoothing=0.2,
            class_weights=True,
            epochs=5,
        ),
        # Noisy classes at a high constant rate: validation loss rises, early stopping stops.
        RunConfig(schedule="constant", lr=0.02, epochs=30, early_stopping=2, batch_size=8),
    ],
    ids=["probe-defaults", "adamw-everything", "sgd-onecycle-weighted", "early-stopping"],
)
def test_fit_head_is_torch_fit(config: RunConfig) -> None:
    noisy = config.early_stopping > 0
    x, y, xv, yv = blobs(90, 40, 24, 3, seed=11, spread=3.0 if noisy else 1.0)
    y[:12] = 0  # uneven classes, for the class weights
    expected, weight, bias = torch_fit(x, y, xv, yv, 3, config)
    fit = fit_head(x, y, xv, yv, 3, config)

    assert len(fit.history) == len(expected)
    for row, want in zip(fit.history, expected, strict=True):
        assert set(row) == set(want)
        for key, value in want.items():
            if key == "seconds":
                continue
            assert row[key] == pytest.approx(value, rel=1e-4, abs=1e-5), (row["epoch"], key)
    if noisy:
        assert expected[-1].get("stopped_early") and len(expected) < config.epochs
        assert [row["epoch"] for row in expected if row.get("kept")] == [len(expected) - 2]
    np.testing.assert_allclose(fit.weight, weight, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(fit.bias, bias, rtol=1e-3, atol=1e-4)


# --- the training loop, on its own ------------------------------------------------------------


def test_a_head_learns_separable_classes_and_reports_each_epoch() -> None:
    x, y, xv, yv = blobs(250, 80, 64, 4)
    progress = Recording()
    seen: list[int] = []
    fit = fit_head(x, y, xv, yv, 4, RunConfig(), progress, lambda h: seen.append(len(h)))

    assert isinstance(fit, HeadFit)
    assert fit.weight.shape == (4, 64) and fit.bias.shape == (4,)
    assert fit.mean.shape == fit.std.shape == (64,)
    assert all(a.dtype == np.float32 for a in (fit.weight, fit.bias, fit.mean, fit.std))
    assert [row["epoch"] for row in fit.history] == list(range(1, 11))
    assert all(set(row) == HISTORY_KEYS for row in fit.history)
    assert all(row["train_images"] == 250 for row in fit.history)
    assert fit.history[0]["lr"] == pytest.approx(head.lr_at(0, RunConfig(), 8))
    assert fit.history[-1]["val_accuracy"] >= 0.95
    assert fit.history[-1]["train_loss"] < fit.history[0]["train_loss"]
    assert seen == list(range(1, 11))  # no early stopping: nothing kept, no extra call

    assert progress.calls[0] == ("begin", "Training the head", 10)
    assert progress.calls[-1] == ("end", None, None)
    advances = progress.calls[1:-1]
    assert len(advances) == 10 and all(amount == 1 for _, amount, _ in advances)
    last = fit.history[-1]
    assert advances[-1][2] == (
        f"loss {last['train_loss']:.3f} acc {last['train_accuracy']:.3f} "
        f"val_loss {last['val_loss']:.3f} val_acc {last['val_accuracy']:.3f}"
    )
    assert all(re.fullmatch(r"loss \S+ acc \S+ val_loss \S+ val_acc \S+", a[2]) for a in advances)

    # The folded head on raw features is the standardised head the last epoch evaluated.
    probs = probabilities(xv, fit.weight, fit.bias)
    assert float((probs.argmax(1) == yv).mean()) == last["val_accuracy"]
    val_loss = float(-np.log(probs[np.arange(len(yv)), yv].astype(np.float64)).mean())
    assert val_loss == pytest.approx(last["val_loss"], rel=1e-4, abs=1e-5)


def test_early_stopping_stops_and_keeps_the_best_epoch() -> None:
    x, y, xv, yv = blobs(60, 40, 16, 3, seed=2, spread=3.0)
    config = RunConfig(schedule="constant", lr=0.02, epochs=40, early_stopping=2, batch_size=8)
    calls: list[list[dict[str, Any]]] = []
    fit = fit_head(x, y, xv, yv, 3, config, on_epoch=lambda h: calls.append(list(h)))

    history = fit.history
    assert len(history) < config.epochs
    assert history[-1].get("stopped_early") is True
    assert sum("stopped_early" in row for row in history) == 1
    kept = [row for row in history if row.get("kept")]
    assert len(kept) == 1
    losses = [row["val_loss"] for row in history]
    assert kept[0]["val_loss"] == min(losses)
    assert 1 < kept[0]["epoch"] < history[-1]["epoch"]
    # Stopped after `early_stopping` epochs no better than the kept one.
    assert history.index(kept[0]) == len(history) - 1 - config.early_stopping
    assert len(calls) == len(history) + 1  # once more after the kept row is marked
    # The returned weights are the kept epoch's.
    probs = probabilities(xv, fit.weight, fit.bias)
    val_loss = float(-np.log(probs[np.arange(len(yv)), yv].astype(np.float64)).mean())
    assert val_loss == pytest.approx(kept[0]["val_loss"], rel=1e-4)
    assert float((probs.argmax(1) == yv).mean()) == kept[0]["val_accuracy"]


def test_an_empty_validation_split_scores_zero() -> None:
    x, y, _, _ = blobs(40, 0, 8, 2)
    for xv in (np.empty((0, 8), np.float32), np.empty(0, np.float32)):
        fit = fit_head(x, y, xv, np.empty(0, np.int64), 2, RunConfig(epochs=3))
        assert [(r["val_loss"], r["val_accuracy"]) for r in fit.history] == [(0.0, 0.0)] * 3
    # As trainer.fit: the first epoch's 0.0 is never bettered, so early stopping stops.
    fit = fit_head(x, y, np.empty((0, 8)), [], 2, RunConfig(epochs=10, early_stopping=2))
    assert len(fit.history) == 3 and fit.history[-1]["stopped_early"]
    assert fit.history[0]["kept"]


def test_folding_the_standardisation_keeps_the_logits() -> None:
    rng = np.random.default_rng(4)
    weight, bias = rng.normal(size=(3, 6)), rng.normal(size=3)
    mean, std = rng.normal(size=6) * 10, rng.uniform(0.01, 5, 6)
    x = rng.normal(size=(20, 6)) * std + mean
    raw_weight, raw_bias = head.fold(weight, bias, mean, std)
    np.testing.assert_allclose(
        x @ raw_weight.T + raw_bias, ((x - mean) / std) @ weight.T + bias, atol=1e-9
    )


def test_standardisation_is_torchs_unbiased_std_clamped() -> None:
    rng = np.random.default_rng(8)
    x = (rng.normal(size=(50, 5)) * [1, 2, 3, 4, 5] + 7).astype(np.float32)
    x[:, 2] = 3.0  # constant: no spread
    mean, std = head.standardisation(x)
    t = torch.from_numpy(x)
    np.testing.assert_allclose(mean, t.mean(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(std, t.std(0).clamp_min(1e-3).numpy(), rtol=1e-5)
    assert std[2] == 1e-3


def test_chunking_does_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y, xv, yv = blobs(70, 30, 12, 3)
    config = RunConfig(epochs=3, batch_size=16)
    whole = fit_head(x, y, xv, yv, 3, config)
    monkeypatch.setattr(head, "CHUNK_VALUES", 20)  # one row per chunk
    chunked = fit_head(x, y, xv, yv, 3, config)
    np.testing.assert_allclose(chunked.weight, whole.weight, rtol=1e-6, atol=1e-7)
    for a, b in zip(chunked.history, whole.history, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-9)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9)


def test_the_seed_decides_everything() -> None:
    x, y, xv, yv = blobs(50, 20, 10, 2)
    config = RunConfig(epochs=2)

    def numbers(fit: HeadFit) -> list[Any]:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in fit.history]

    a, b = fit_head(x, y, xv, yv, 2, config), fit_head(x, y, xv, yv, 2, config)
    assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
    assert numbers(a) == numbers(b)
    c = fit_head(x, y, xv, yv, 2, config.replace(seed=1))
    assert not np.allclose(a.weight, c.weight)
    assert numbers(a)[0]["train_loss"] != numbers(c)[0]["train_loss"]


def test_probabilities_are_a_stable_softmax() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(9, 4)).astype(np.float32)
    weight, bias = rng.normal(size=(3, 4)) * 5000, rng.normal(size=3)
    probs = probabilities(x, weight, bias)
    assert probs.dtype == np.float32 and probs.shape == (9, 3)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-6)
    expected = torch.softmax(
        torch.tensor(x, dtype=torch.float64) @ torch.tensor(weight).T + torch.tensor(bias), dim=1
    )
    np.testing.assert_allclose(probs, expected.numpy(), atol=1e-6)
    assert probabilities(np.empty((0, 4), np.float32), weight, bias).shape == (0, 3)


# --- no torch ---------------------------------------------------------------------------------


def test_the_head_never_imports_torch() -> None:
    script = """
        import sys
        import numpy as np
        import annotate2model.training.head as head
        from annotate2model.training.config import RunConfig
        rng = np.random.default_rng(0)
        x = rng.normal(size=(30, 8)).astype(np.float32)
        y = np.arange(30) % 3
        fit = head.fit_head(x, y, x[:9], y[:9], 3, RunConfig(epochs=2, class_weights=True))
        head.probabilities(x, fit.weight, fit.bias)
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if "torch" in m)
        print("ok")
        """
    assert run_python(script, timeout=120).strip() == "ok"


def test_the_trainer_re_exports_the_schedule_and_the_comparison() -> None:
    assert trainer.lr_at is head.lr_at
    assert trainer.beats is head.beats
