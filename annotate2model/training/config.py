"""One typed run configuration, its JSON form, and presets for the hand-made workflows it replaces.

Importing this module does not import torch: the CLI builds a RunConfig before deciding to train.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from dataclasses import dataclass, field
from typing import Any

from annotate2model.errors import InputError
from annotate2model.settings import SPLITS as SPLITS  # the one split order


class Choice(enum.StrEnum):
    """A closed set of option values: typer lists them in `--help`, the config keeps the string."""

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)


class Backbone(Choice):
    RESNET18 = "resnet18"
    RESNET50 = "resnet50"
    MOBILENET_V2 = "mobilenet_v2"
    MOBILENET_V3_LARGE = "mobilenet_v3_large"
    EFFICIENTNET_B0 = "efficientnet_b0"
    VGG16 = "vgg16"


class Mode(Choice):
    PROBE = "probe"
    FINETUNE = "finetune"


class OptimizerName(Choice):
    SGD = "sgd"
    ADAMW = "adamw"


class Schedule(Choice):
    CYCLIC = "cyclic"
    COSINE = "cosine"
    ONECYCLE = "onecycle"
    CONSTANT = "constant"


class Precision(Choice):
    AUTO = "auto"
    BF16 = "bf16"
    FP32 = "fp32"


BACKBONES = Backbone.values()
MODES = Mode.values()
OPTIMIZERS = OptimizerName.values()
SCHEDULES = Schedule.values()
PRECISIONS = Precision.values()
# Device requests: these, or an indexed accelerator such as cuda:1.
DEVICES = ("auto", "cpu", "cuda", "mps")

# Per architecture: the state-dict prefix of the classifier's last Linear (the part a run
# replaces), and the feature width that enters it.
HEADS: dict[str, tuple[str, int]] = {
    "resnet18": ("fc", 512),
    "resnet50": ("fc", 2048),
    "mobilenet_v2": ("classifier.1", 1280),
    "mobilenet_v3_large": ("classifier.3", 1280),
    "efficientnet_b0": ("classifier.1", 1280),
    "vgg16": ("classifier.6", 4096),
}


def auto_workers(cpu_count: int | None = None) -> int:
    """Decoding workers for `workers = -1`: one core is left to the model, at most 4."""
    return max(1, min(4, (cpu_count or os.cpu_count() or 2) - 1))


def resolve_workers(requested: int) -> int:
    """One meaning in every mode: -1 picks `auto_workers()`, 0 decodes on the main thread (no
    worker threads or processes), N uses N workers."""
    return auto_workers() if requested < 0 else requested


def eval_batch_size(device_type: str, requested: int = 0) -> int:
    """Images per forward pass when extracting or predicting: `requested`, else 32 on a CPU
    (small batches stay in cache and run faster there), 128 on an accelerator."""
    if requested > 0:
        return requested
    return 32 if device_type == "cpu" else 128


HEAD_INITS = ("probe", "random")

# What unset fields become when fine-tuning (after a probe stage that starts the head, see
# docs/finetune.md): AdamW at a gentle rate, a warm-up epoch then cosine decay, the blocks at a
# tenth of the head's rate, few epochs with early stopping (the best epoch is kept, and the probe's
# solution when none beats it), and random flips of the frozen blocks' outputs. A probe's head is
# a logistic regression fitted by L-BFGS (head.py): none of these apply to it, and a probe's
# config leaves them unset.
MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    # A probe's extra views (`views`) are augmented ones whatever `augment` says.
    "probe": {"augment": False},
    "finetune": {
        "optimizer": "adamw",
        "schedule": "cosine",
        "epochs": 5,
        "lr": 1e-4,
        "weight_decay": 0.05,
        "early_stopping": 2,
        "warmup_epochs": 1.0,
        "augment": True,
    },
}
# The value that means "unset" for each field with a per-mode default.
UNSET: dict[str, Any] = {
    "optimizer": "",
    "schedule": "",
    "epochs": 0,
    "lr": 0.0,
    "weight_decay": -1.0,
    "early_stopping": -1,
    "warmup_epochs": -1.0,
    "augment": None,
}


@dataclass
class RunConfig:
    """Everything that decides what a run computes; saved beside its outputs and in the ledger."""

    # torchvision architecture name, one of BACKBONES.
    backbone: str = "resnet18"
    # "imagenet" (torchvision's default weights, from the torch hub cache), "none" (random
    # initialisation from `seed`), or a path to a state_dict file.
    weights: str = "imagenet"
    # "probe": frozen backbone + new linear head; "finetune": train the last `unfreeze` blocks too.
    mode: str = "probe"
    # Fine-tuning only: how many of the backbone's last blocks train, as a number or "all".
    unfreeze: str = "1"
    # "sgd" (with `momentum`) or "adamw"; unset (""): the mode's default (MODE_DEFAULTS).
    optimizer: str = ""
    # Learning-rate schedule over the whole run, torch's schedulers: cyclic (CyclicLR triangular2),
    # cosine, onecycle, constant; unset (""): the mode's default.
    schedule: str = ""
    # Passes over the training split (fine-tuning: after the probe stage); 0: the mode's default.
    epochs: int = 0
    # Images (or cached feature rows) per optimiser step.
    batch_size: int = 32
    # Peak learning rate (cyclic: the top of the cycle; its bottom is lr * 1e-4); fine-tuning: the
    # head's, the unfrozen blocks get lr * block_lr_scale. 0: the mode's default.
    lr: float = 0.0
    # SGD momentum (ignored by AdamW).
    momentum: float = 0.9
    # L2 penalty (SGD) or decoupled weight decay (AdamW); -1: the mode's default.
    weight_decay: float = -1.0
    # Cross-entropy label smoothing in [0, 1).
    label_smoothing: float = 0.0
    # Weight the loss by inverse class frequency, for imbalanced data.
    class_weights: bool = False
    # Stop after this many epochs without a better validation loss (0: never); the best epoch's
    # weights are kept. -1: the mode's default.
    early_stopping: int = -1
    # Fine-tuning only: the unfrozen blocks' learning rate as a share of the head's `lr`.
    block_lr_scale: float = 0.1
    # Epochs of linear learning-rate warm-up before the schedule (onecycle: the length of its own
    # rise); -1: the mode's default.
    warmup_epochs: float = -1.0
    # Fine-tuning only: "probe" starts the head from the linear probe's solution (trained first on
    # the cached features, and kept when no fine-tuned epoch beats it on validation); "random"
    # starts from a random head and keeps the best fine-tuned epoch.
    head_init: str = "probe"
    # Seeds shuffling, augmentation and random initialisation.
    seed: int = 0
    # Square input size in pixels; images are resized to size * 8 / 7 and centre-cropped.
    image_size: int = 224
    # Training-time augmentation (random resized crop, flips, small rotations); None: the mode's
    # default (on for fine-tuning, off for probes); always a bool once the config is made.
    augment: bool | None = None
    # Maximum rotation of augmentation, in degrees.
    rotation: float = 10.0
    # Views per training image computed once and reused across epochs: the clean view, then seeded
    # augmented ones (probes: cached features; fine-tuning: the frozen blocks' outputs, one view
    # drawn per image and epoch, and flipped at random when `augment` is on).
    views: int = 1
    # Arithmetic on the device: "auto" uses bf16 autocast where the device supports it.
    precision: str = "auto"
    # Images per forward pass when extracting features or evaluating; 0: 32 on a CPU (small
    # batches stay in cache and run faster there), 128 on an accelerator.
    eval_batch_size: int = 0
    # Decoding workers (threads for extraction, DataLoader processes for fine-tuning); -1: auto
    # (`auto_workers()`), 0: decode on the main thread, in both modes.
    workers: int = -1
    # Free text kept with the run.
    note: str = ""
    # Name of the preset this configuration started from, if any.
    preset: str | None = None
    # Extra options for later versions of the tool; kept so that old ledgers still load.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Choices may arrive as enum members (the CLI); the config keeps plain strings.
        for name in ("backbone", "mode", "optimizer", "schedule", "precision"):
            value = getattr(self, name)
            if isinstance(value, Choice):
                setattr(self, name, value.value)
        # Unset fields take the mode's default, so that the saved config says what ran.
        for name, value in MODE_DEFAULTS.get(self.mode, {}).items():
            if getattr(self, name) == UNSET[name]:
                setattr(self, name, value)
        self.validate()

    @property
    def augment_enabled(self) -> bool:
        return bool(self.augment)

    def optimiser_fields_set(self) -> list[str]:
        """The fine-tuning-only fields a probe's config was given (they do not apply to it)."""
        return [
            name
            for name, unset in UNSET.items()
            if name != "augment" and getattr(self, name) != unset
        ]

    def probe_stage(self) -> RunConfig:
        """Fine-tuning's first stage: the linear probe on the clean views, sharing what decides
        the data (backbone, weights, seed, size, class weights)."""
        return dataclasses.replace(
            self, mode="probe", **{name: UNSET[name] for name in UNSET}, views=1
        )

    def eval_batch_for(self, device_type: str) -> int:
        return eval_batch_size(device_type, self.eval_batch_size)

    @property
    def resize_size(self) -> int:
        return round(self.image_size * 8 / 7)

    def validate(self) -> None:
        def choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
            if value not in allowed:
                raise InputError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}.")

        choice("backbone", self.backbone, BACKBONES)
        choice("mode", self.mode, MODES)
        choice("precision", self.precision, PRECISIONS)
        # A probe's optimiser fields may stay unset (UNSET); what is set must make sense.
        if self.optimizer != UNSET["optimizer"] or self.mode == "finetune":
            choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.schedule != UNSET["schedule"] or self.mode == "finetune":
            choice("schedule", self.schedule, SCHEDULES)
        if self.unfreeze != "all" and not (self.unfreeze.isdigit() and int(self.unfreeze) >= 0):
            raise InputError(f"unfreeze takes a number of blocks or 'all', not {self.unfreeze!r}.")
        positive = {
            "batch size": self.batch_size,
            "image size": self.image_size,
            "views": self.views,
        }
        for name, value in positive.items():
            if value < 1:
                raise InputError(f"{name} must be at least 1, got {value}.")
        if self.workers < -1:
            raise InputError(f"workers must be -1 (auto), 0 or more, got {self.workers}.")
        if self.eval_batch_size < 0:
            raise InputError(f"eval batch size cannot be negative, got {self.eval_batch_size}.")
        if self.image_size < 16:
            raise InputError(f"image size must be at least 16 pixels, got {self.image_size}.")
        if self.epochs < 0 or (self.mode == "finetune" and self.epochs < 1):
            raise InputError(f"epochs must be at least 1, got {self.epochs}.")
        if self.lr < 0 or (self.mode == "finetune" and self.lr == 0):
            raise InputError(f"learning rate must be positive, got {self.lr}.")
        if not 0 <= self.label_smoothing < 1:
            raise InputError(f"label smoothing must be in [0, 1), got {self.label_smoothing}.")
        negative = (
            self.weight_decay < 0 and self.weight_decay != UNSET["weight_decay"],
            self.early_stopping < 0 and self.early_stopping != UNSET["early_stopping"],
            self.warmup_epochs < 0 and self.warmup_epochs != UNSET["warmup_epochs"],
        )
        if any(negative):
            raise InputError("weight decay, early stopping and warm-up cannot be negative.")
        if self.views > 1 and self.mode == "finetune" and not self.augment:
            raise InputError("fine-tuning views beyond the clean one are augmented views.")
        if self.block_lr_scale <= 0:
            raise InputError(f"block lr scale must be positive, got {self.block_lr_scale}.")
        if self.head_init not in HEAD_INITS:
            raise InputError(
                f"unknown head init {self.head_init!r}; choose one of {', '.join(HEAD_INITS)}."
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        extra = dict(data.get("extra") or {})
        extra.update({k: v for k, v in data.items() if k not in known})
        values = {k: v for k, v in data.items() if k in known and k != "extra"}
        return cls(**values, extra=extra)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


# The hand-made workflows of DESIGN.md, each one configuration.
PRESETS: dict[str, dict[str, Any]] = {
    # ResNet-18 as a fixed feature extractor: fc replaced by a logistic regression on the cached
    # features (the default run).
    "resnet18-probe": {"backbone": "resnet18", "mode": "probe"},
    # The same on the clean view and 3 seeded augmented views (flips, small rotations) per image.
    "resnet18-probe-augmented": {"backbone": "resnet18", "mode": "probe", "views": 4},
    # The hand-made notebooks' recipe, as the baseline it is: frozen backbone, a new head trained
    # by SGD (momentum 0.9) with CyclicLR triangular2, batch 32, 10 epochs, 224 px, augmented
    # views (flips, small rotations) drawn every epoch.
    "resnet18-frozen-sgd": {
        "backbone": "resnet18",
        "mode": "finetune",
        "unfreeze": "0",
        "head_init": "random",
        "optimizer": "sgd",
        "schedule": "cyclic",
        "epochs": 10,
        "lr": 1e-2,
        "weight_decay": 0.0,
        "early_stopping": 0,
        "warmup_epochs": 0.0,
        "augment": True,
        "views": 4,
    },
    # The same with AdamW instead of SGD, for the optimiser comparison.
    "resnet18-probe-adamw": {
        "backbone": "resnet18",
        "mode": "finetune",
        "unfreeze": "0",
        "head_init": "random",
        "optimizer": "adamw",
        "schedule": "cosine",
        "epochs": 10,
        "lr": 1e-3,
        "weight_decay": 1e-2,
        "early_stopping": 0,
        "warmup_epochs": 0.0,
        "augment": True,
        "views": 4,
    },
    "resnet50-finetune": {
        "backbone": "resnet50",
        "mode": "finetune",
        "unfreeze": "1",
        "lr": 1e-3,
        "schedule": "cosine",
    },
    "mobilenet_v2-finetune": {
        "backbone": "mobilenet_v2",
        "mode": "finetune",
        "unfreeze": "3",
        "lr": 1e-3,
        "schedule": "cosine",
    },
    "mobilenet_v3-finetune": {
        "backbone": "mobilenet_v3_large",
        "mode": "finetune",
        "unfreeze": "3",
        "lr": 1e-3,
        "schedule": "cosine",
    },
    "efficientnet_b0-finetune": {
        "backbone": "efficientnet_b0",
        "mode": "finetune",
        "unfreeze": "2",
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 1e-2,
        "schedule": "onecycle",
    },
    "vgg16-finetune": {
        "backbone": "vgg16",
        "mode": "finetune",
        "unfreeze": "2",
        "lr": 1e-3,
        "schedule": "cosine",
    },
}


def preset_config(name: str, **overrides: Any) -> RunConfig:
    """A preset with some fields overridden (fields left None keep the preset's value)."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    values = dict(PRESETS[name])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return RunConfig(**values, preset=name)
