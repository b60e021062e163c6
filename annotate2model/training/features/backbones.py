"""Backbones through torchvision's weights API: build, load weights, split into trunk and head.

A model here is `Classifier(trunk, head)`: the torchvision network with its last Linear replaced by
Identity (the trunk, giving features), and a new Linear (the head).
"""

from __future__ import annotations

import pickle
import urllib.error
import zipfile
from pathlib import Path

import torch
from torch import nn

from annotate2model.errors import InputError, TrainingError
from annotate2model.training.config import BACKBONES, HEADS
from annotate2model.training.features.weights import (
    WeightsSource,
    check_backbone,
    imagenet_checkpoint_path,
)


class Classifier(nn.Module):
    """Trunk (features) then a linear head: what every run trains and every artifact holds."""

    def __init__(self, trunk: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.trunk(x))
        return out


def _tv_model(backbone: str) -> nn.Module:
    import torchvision

    model: nn.Module = torchvision.models.get_model(backbone, weights=None)
    return model


def load_state_dict(backbone: str, source: WeightsSource) -> dict[str, torch.Tensor] | None:
    """The weights as a state dict (None for random initialisation). Never unpickles objects."""
    if source.kind == "none":
        return None
    if source.kind == "imagenet":
        import torchvision

        enum = torchvision.models.get_model_weights(backbone).DEFAULT
        try:
            state: dict[str, torch.Tensor] = enum.get_state_dict(progress=False, check_hash=False)
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            target = imagenet_checkpoint_path(backbone)
            raise TrainingError(
                f"cannot download the ImageNet weights of {backbone} ({exc}); without network, "
                f"use a local state_dict file, or put {target.name} into the torch hub cache "
                f"at {target}.",
                hint=f"pass --weights PATH, or copy {target.name} to {target}.",
            ) from None
        return state
    assert source.path is not None
    return read_state_dict(source.path)


# How every file torch.save writes begins: a zip archive (since torch 1.6), or a pickle.
_CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")


def read_state_dict(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A state dict of tensors from a file written by torch.save, loaded with `weights_only`
    (never unpickling objects). `device="meta"` reads names and shapes without the data."""
    with path.open("rb") as f:
        head = f.read(16)
    if not head.startswith(_CHECKPOINT_MAGIC):
        text = (head.decode("utf-8", "replace").splitlines() or [""])[0]
        if not head:
            what = "it is empty"
        elif text and text.isprintable():
            what = f"it starts with {text!r}"
        else:
            what = "its first bytes are not those of a torch.save file"
        raise TrainingError(
            f"{path} is not a PyTorch weights file ({what}); a state_dict saved with "
            "torch.save is expected.",
            hint="pass --weights with a .pth/.pt state_dict file, imagenet or none.",
        )
    try:
        loaded = torch.load(path, map_location=device, weights_only=True)
    # What torch.load raises for a file it cannot read: pickle's refusal under weights_only,
    # a broken zip archive, a file cut short, a storage it cannot map.
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        if first.startswith("Weights only load failed"):
            raise TrainingError(
                f"{path} holds pickled Python objects (a whole model?), not only tensors; "
                "a state_dict (torch.save(model.state_dict(), path)) is expected.",
            ) from None
        raise TrainingError(
            f"cannot read weights from {path} ({first}); a state_dict saved with torch.save "
            "is expected."
        ) from None
    if (
        isinstance(loaded, dict)
        and "state_dict" in loaded
        and isinstance(loaded["state_dict"], dict)
    ):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise TrainingError(f"{path} does not hold a state_dict of tensors.")
    return {str(k).removeprefix("module."): v for k, v in loaded.items()}


def trunk_state_from(
    backbone: str,
    state: dict[str, torch.Tensor],
    origin: str,
    trunk: nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """The state dict without the classifier's last Linear, checked against the architecture.

    `trunk` (from `build_trunk`) saves building a second network just to read its shapes.
    """
    head_prefix = HEADS[backbone][0] + "."
    trunk_state = {k: v for k, v in state.items() if not k.startswith(head_prefix)}
    reference = (trunk if trunk is not None else build_trunk(backbone)).state_dict()
    expected = {k: v for k, v in reference.items() if not k.startswith(head_prefix)}
    missing = sorted(set(expected) - set(trunk_state))
    unexpected = sorted(set(trunk_state) - set(expected))
    mismatched = [
        f"{k} {tuple(trunk_state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in trunk_state and trunk_state[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        detail = "; ".join(
            part
            for part in (
                f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
                f"shape mismatch {mismatched[0]}" if mismatched else "",
            )
            if part
        )
        others = [b for b in fitting_backbones(state) if b != backbone]
        fits = f" They fit {' and '.join(others)}." if others else ""
        raise TrainingError(
            f"the weights in {origin} do not fit {backbone}: {detail}.{fits}",
            hint=f"pass --backbone {others[0]}, or weights made for {backbone}."
            if others
            else f"pass weights made for {backbone}, --weights imagenet or --weights none.",
        )
    return trunk_state


def meta_trunk(backbone: str) -> nn.Module:
    """`build_trunk` on the meta device: the architecture's names and shapes, no memory spent
    on the weights."""
    with torch.device("meta"):
        return build_trunk(backbone)


def fitting_backbones(state: dict[str, torch.Tensor]) -> list[str]:
    """The backbones whose trunk has exactly the names and shapes of `state` (less the head)."""
    found = []
    for name in BACKBONES:
        head_prefix = HEADS[name][0] + "."
        expected = {
            k: tuple(v.shape)
            for k, v in meta_trunk(name).state_dict().items()
            if not k.startswith(head_prefix)
        }
        given = {k: tuple(v.shape) for k, v in state.items() if not k.startswith(head_prefix)}
        if given == expected:
            found.append(name)
    return found


def build_trunk(backbone: str) -> nn.Module:
    """The torchvision network with its last Linear replaced by Identity (random weights)."""
    check_backbone(backbone)
    model = _tv_model(backbone)
    prefix = HEADS[backbone][0]
    parent_name, _, child = prefix.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Identity())
    return model


def blocks(backbone: str, trunk: nn.Module) -> list[nn.Module]:
    """The trunk's blocks in forward order; fine-tuning (`--unfreeze N`) trains the last N.

    - resnet18, resnet50: the stem (conv1 + bn1), layer1, layer2, layer3, layer4 (5 blocks;
      1 = layer4, 2 = layer3 and layer4).
    - mobilenet_v2: the 19 stages of `features` (the stem, 17 inverted-residual blocks, the last
      1x1 convolution; 1 = that convolution, 3 = it and the last two residual blocks).
    - mobilenet_v3_large: the 17 stages of `features`, then the hidden Linear of the classifier
      (18 blocks; 1 = the hidden Linear).
    - efficientnet_b0: the 9 stages of `features` (the stem, 7 MBConv stages, the last 1x1
      convolution; 2 = the last MBConv stage and that convolution).
    - vgg16: the 13 convolutions, then the 2 hidden Linears of the classifier (15 blocks; 1 = the
      second hidden Linear, 2 = both, 3 = the last convolution too).

    A block's normalisation layers train with it (their statistics stay frozen when fine-tuning
    starts from pretrained weights).
    """

    def sub(name: str) -> nn.Module:
        return trunk.get_submodule(name)

    if backbone.startswith("resnet"):
        stem = nn.ModuleList([sub("conv1"), sub("bn1")])
        return [stem, sub("layer1"), sub("layer2"), sub("layer3"), sub("layer4")]
    features = list(sub("features").children())
    linears = [m for m in sub("classifier").children() if isinstance(m, nn.Linear)]
    if backbone == "vgg16":
        convs = [m for m in features if isinstance(m, nn.Conv2d)]
        return [*convs, *linears]
    # MobileNet V2/V3 and EfficientNet: the stages of `features`, then any hidden classifier layer.
    return [*features, *linears]


def stages(backbone: str, trunk: nn.Module) -> list[nn.Module]:
    """The trunk as a flat list of modules that, run in order, compute `trunk(x)` (each
    torchvision forward() is such a chain, with a flatten before the classifier)."""

    def sub(name: str) -> nn.Module:
        return trunk.get_submodule(name)

    if backbone.startswith("resnet"):
        names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        return [*(sub(n) for n in names), sub("avgpool"), nn.Flatten(1), sub("fc")]
    pool = nn.AdaptiveAvgPool2d(1) if backbone == "mobilenet_v2" else sub("avgpool")
    return [*sub("features").children(), pool, nn.Flatten(1), *sub("classifier").children()]


def split_trunk(
    backbone: str, trunk: nn.Module, unfreeze: str
) -> tuple[nn.Sequential, nn.Sequential]:
    """(frozen prefix, trainable rest) of the trunk for `unfreeze` blocks: the rest applied to
    the prefix's output is `trunk(x)`, and the prefix holds no block that trains. The prefix is
    empty (nn.Sequential()) when every block trains."""
    parts = blocks(backbone, trunk)
    n = len(parts) if unfreeze == "all" else int(unfreeze)
    chain = stages(backbone, trunk)
    if n == 0:
        at = len(chain)
    else:
        first = parts[len(parts) - n]
        # The stem block of a ResNet is a ModuleList of its conv1 and bn1: it starts at conv1.
        first = first[0] if isinstance(first, nn.ModuleList) else first
        at = next(i for i, m in enumerate(chain) if m is first)
    return nn.Sequential(*chain[:at]), nn.Sequential(*chain[at:])


def check_unfreeze(backbone: str, count: int, unfreeze: str) -> None:
    """Refuse unfreezing more blocks than the backbone's `count` (see `blocks`)."""
    if unfreeze != "all" and int(unfreeze) > count:
        raise InputError(
            f"{backbone} has {count} blocks; unfreezing {unfreeze} is more than that "
            "(use a smaller number or all).",
            hint=f"pass --unfreeze with 1 to {count}, or --unfreeze all.",
        )


def set_trainable(model: Classifier, backbone: str, mode: str, unfreeze: str) -> int:
    """Freeze what the mode says; returns the number of trainable parameters."""
    model.trunk.requires_grad_(False)
    if mode == "finetune":
        parts = blocks(backbone, model.trunk)
        check_unfreeze(backbone, len(parts), unfreeze)
        chosen = parts if unfreeze == "all" else parts[len(parts) - int(unfreeze) :]
        if unfreeze == "all":
            model.trunk.requires_grad_(True)
        else:
            for part in chosen:
                part.requires_grad_(True)
    model.head.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def freeze_batchnorm(model: nn.Module) -> None:
    """Put every normalisation layer in eval mode: running statistics are used and kept as they
    are (a few hundred images estimate them worse than the pretraining did)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def freeze_batchnorm_of_frozen(model: nn.Module) -> None:
    """Put normalisation layers whose parameters are frozen in eval mode (keeps running stats)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.eval()
