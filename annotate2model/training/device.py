"""Picking the device and the arithmetic: CUDA, then MPS, then CPU; bf16 where supported."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from annotate2model.errors import InputError


def pick_device(requested: str = "auto") -> torch.device:
    """`auto` takes CUDA, then MPS, then CPU; any other value is forced (and checked)."""
    if requested in ("auto", ""):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise InputError(f"unknown device {requested!r}; try auto, cpu, cuda or mps.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            "the CUDA device was asked for, but none is available.",
            hint="pass --device auto or --device cpu (or set A2M_DEVICE).",
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(
            "the MPS device was asked for, but MPS is not available here.",
            hint="pass --device auto or --device cpu (or set A2M_DEVICE).",
        )
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return f"cpu: {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    return str(device)


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def use_bf16(device: torch.device, precision: str) -> bool:
    """bf16 autocast for "auto" where the device has it, never for "fp32"; "bf16" insists."""
    if precision == "fp32":
        return False
    supported = bf16_supported(device)
    if precision == "bf16" and not supported:
        raise InputError(
            f"bf16 precision was asked for, but {device.type} here lacks bf16.",
            hint="pass --precision auto or --precision fp32.",
        )
    return supported


@contextlib.contextmanager
def autocast(device: torch.device, bf16: bool) -> Iterator[None]:
    if bf16:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
