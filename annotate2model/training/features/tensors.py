"""Weights as safetensors files: written atomically from torch tensors or numpy arrays, read back
as torch tensors. Nothing is ever unpickled."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from annotate2model.errors import NotFoundError
from annotate2model.fsutil import atomic_write

if TYPE_CHECKING:
    import torch

# Weights as a trainer hands them over: torch tensors (a trunk, a fine-tuned head), or numpy
# arrays (a probe's scikit-learn head). Either way the same safetensors file is written.
Tensors = dict[str, "torch.Tensor"] | dict[str, NDArray[Any]]


def write_tensors(path: Path, tensors: Tensors, mode: int | None = 0o644) -> None:
    """`tensors` as a safetensors file, written atomically (numpy arrays need no torch)."""
    if all(isinstance(v, np.ndarray) for v in tensors.values()):
        from safetensors.numpy import save_file as save_numpy

        arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        atomic_write(path, lambda tmp: save_numpy(arrays, str(tmp)), mode=mode)
        return
    import torch
    from safetensors.torch import save_file

    state = {k: torch.as_tensor(v).detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp)), mode=mode)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise NotFoundError(f"{path} is missing from the run's folder.")
    tensors: dict[str, torch.Tensor] = load_file(str(path))
    return tensors
