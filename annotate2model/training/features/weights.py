"""Whether torchvision's ImageNet weights of a backbone can be had: cached, downloadable or not.

Also where weights come from and their content identity (`resolve_weights`). The weights' URL is
torchvision's (its weights API) and the cache folder torch hub's (`torch.hub.get_dir()`): both
are imported when a status is asked for.
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from annotate2model.errors import InputError
from annotate2model.fsutil import file_sha256
from annotate2model.training.config import BACKBONES

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
    # Where torchvision's weights API downloads it from.
    url: str = ""


def imagenet_url(backbone: str) -> str:
    """The URL of `backbone`'s default ImageNet weights, as torchvision's weights API names it."""
    check_backbone(backbone)
    import torchvision

    url: str = torchvision.models.get_model_weights(backbone).DEFAULT.url
    return url


def imagenet_checkpoint_path(backbone: str, hub_dir: Path | None = None) -> Path:
    """Where torch hub keeps (or would keep) the ImageNet weights file of `backbone`."""
    url = imagenet_url(backbone)
    if hub_dir is None:
        import torch.hub

        hub_dir = Path(torch.hub.get_dir())
    return hub_dir / "checkpoints" / os.path.basename(urllib.parse.urlsplit(url).path)


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
    url = imagenet_url(backbone)
    if checkpoint.is_file():
        return WeightsStatus("cached", checkpoint, f"{checkpoint.name} in {checkpoint.parent}", url)
    host = urllib.parse.urlsplit(url).netloc
    problem = _reachable(url, timeout)
    if problem is None:
        return WeightsStatus(
            "downloadable",
            checkpoint,
            f"not cached; {host} answers (downloaded into {checkpoint.parent} on first use)",
            url,
        )
    return WeightsStatus(
        "offline",
        checkpoint,
        f"not cached at {checkpoint} and {host} cannot be reached ({problem})",
        url,
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
