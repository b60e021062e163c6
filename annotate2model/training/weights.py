"""Whether torchvision's ImageNet weights of a backbone can be had: cached, downloadable or not.

Also where weights come from and their content identity (`resolve_weights`), which the early
extraction needs before torch is loaded (prefetch.py).

Importing this module loads neither torch nor torchvision (the doctor and the demo ask before
anything trains); `imagenet_weights_status` asks torch hub where its cache is when called.
`annotate2model.training.backbones` re-exports it.
"""

from __future__ import annotations

import os
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from annotate2model.errors import InputError
from annotate2model.fsutil import file_sha256 as file_sha256
from annotate2model.training.config import BACKBONES

# The DEFAULT weights of each backbone in torchvision (tests/training/test_weights_status.py
# checks these against the installed torchvision, so a release that moves them is noticed).
IMAGENET_URLS: dict[str, str] = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    "mobilenet_v2": "https://download.pytorch.org/models/mobilenet_v2-7ebf99e0.pth",
    "mobilenet_v3_large": "https://download.pytorch.org/models/mobilenet_v3_large-5c1a4163.pth",
    "efficientnet_b0": "https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth",
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
}

WeightsState = Literal["cached", "downloadable", "offline"]


@dataclass(frozen=True)
class WeightsStatus:
    """Whether a backbone's ImageNet weights are in the torch hub cache, can be downloaded, or
    neither (then a run needs a local weights file, or random weights)."""

    state: WeightsState
    # Where torch hub keeps (or would keep) the weights file.
    checkpoint: Path
    # One line for a person: the file, or why it cannot be downloaded.
    detail: str


def _hub_dir() -> Path:
    """torch hub's cache folder, as `torch.hub.get_dir()` finds it, without importing torch
    (the probe on the CPU runs without it): $TORCH_HOME/hub, $TORCH_HOME defaulting to
    $XDG_CACHE_HOME/torch, that to ~/.cache. Where torch is loaded already, torch hub says (a
    program may have called `torch.hub.set_dir`)."""
    hub = sys.modules.get("torch.hub")
    if hub is not None:
        return Path(hub.get_dir())
    cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    home = os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(cache, "torch")))
    return Path(home) / "hub"


def imagenet_checkpoint_path(backbone: str, hub_dir: Path | None = None) -> Path:
    """Where torch hub keeps (or would keep) the ImageNet weights file of `backbone`."""
    if backbone not in IMAGENET_URLS:
        from annotate2model.errors import InputError

        raise InputError(
            f"unknown backbone {backbone!r}; choose one of {', '.join(IMAGENET_URLS)}."
        )
    name = os.path.basename(urllib.parse.urlsplit(IMAGENET_URLS[backbone]).path)
    return (hub_dir if hub_dir is not None else _hub_dir()) / "checkpoints" / name


def _reachable(url: str, timeout: float) -> str | None:
    """None when a HEAD request for `url` is answered with success within `timeout` seconds
    (name lookup included), else why not in a few words."""
    outcome: list[str | None] = []

    def head() -> None:
        try:
            request = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status = int(response.status)
            outcome.append(None if status < 400 else f"HTTP {status}")
        except urllib.error.HTTPError as exc:
            outcome.append(f"HTTP {exc.code}")
        except urllib.error.URLError as exc:
            outcome.append(str(exc.reason))
        except (OSError, ValueError) as exc:
            outcome.append(str(exc) or exc.__class__.__name__)

    # A name lookup is not bound by the socket timeout: the thread is, and is left behind.
    worker = threading.Thread(target=head, name="a2m-weights-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        return f"no answer within {timeout:g} s"
    return outcome[0]


def imagenet_weights_status(backbone: str, timeout: float = 2.0) -> WeightsStatus:
    """Whether `backbone`'s ImageNet weights are cached by torch hub, can be downloaded (the host
    answers a HEAD request within `timeout` seconds), or neither ("offline")."""
    checkpoint = imagenet_checkpoint_path(backbone)
    if checkpoint.is_file():
        return WeightsStatus("cached", checkpoint, f"{checkpoint.name} in {checkpoint.parent}")
    url = IMAGENET_URLS[backbone]
    host = urllib.parse.urlsplit(url).netloc
    problem = _reachable(url, timeout)
    if problem is None:
        return WeightsStatus(
            "downloadable",
            checkpoint,
            f"not cached; {host} answers (downloaded into {checkpoint.parent} on first use)",
        )
    return WeightsStatus(
        "offline",
        checkpoint,
        f"not cached at {checkpoint} and {host} cannot be reached ({problem})",
    )


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's weights come from and a stable identity of their content."""

    # "imagenet", "none" or "path".
    kind: str
    # The torchvision enum name, "none-seed<N>", or "sha256:<hex>" of the file.
    identity: str
    path: Path | None = None


def check_backbone(name: str) -> None:
    if name not in BACKBONES:
        raise InputError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}.")


def digest_memo(cache_dir: Path) -> Path:
    """Where a workspace remembers the SHA-256 of its weights files (`fsutil.file_sha256`)."""
    return cache_dir / "digests"


def resolve_weights(
    backbone: str, weights: str, seed: int, memo: Path | None = None
) -> WeightsSource:
    """Turn `--weights imagenet|none|PATH` into a source with a content identity.

    A file's identity is its SHA-256: 0.2 s for ResNet-18 on a small CPU, and over a second
    while torch loads beside it, at every run. `memo` (`digest_memo`) keeps it for a file that
    has not changed since.
    """
    check_backbone(backbone)
    if weights == "imagenet":
        from importlib.metadata import version

        # The default enum can change between torchvision releases: the version is in the name.
        return WeightsSource("imagenet", f"{backbone}:default@torchvision-{version('torchvision')}")
    if weights == "none":
        return WeightsSource("none", f"none-seed{seed}")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise InputError(
            f"the weights file {weights} does not exist.",
            hint="pass --weights with an existing state_dict file, --weights imagenet or "
            "--weights none.",
        )
    return WeightsSource("path", f"sha256:{file_sha256(path, memo)}", path.resolve())
