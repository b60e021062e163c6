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
    """Whether bf16 arithmetic works on `device` at all (natively or emulated)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def bf16_fast(device: torch.device) -> bool:
    """Whether bf16 is faster than fp32 on `device`: CUDA with bf16, or a CPU with native bf16
    instructions (AVX512-BF16 or AMX). oneDNN also runs bf16 on plain AVX-512 by emulation, at
    less than half the fp32 speed (measured on a 2-core AVX-512 Xeon: ResNet-18 15.3 img/s fp32,
    6.4 img/s bf16), so `auto` must not pick it there."""
    if device.type == "cuda":
        return bf16_supported(device)
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        native = [
            getattr(cpu, name, None)
            for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        ]
        checks = [check for check in native if callable(check)]
        if not checks:
            return bf16_supported(device)
        return any(bool(check()) for check in checks) and bf16_supported(device)
    return False


def use_bf16(device: torch.device, precision: str) -> bool:
    """bf16 autocast for "auto" where the device is faster with it, never for "fp32"; "bf16"
    insists (and runs emulated where the hardware lacks it)."""
    if precision == "fp32":
        return False
    if precision == "bf16":
        if not bf16_supported(device):
            raise InputError(
                f"bf16 precision was asked for, but {device.type} here lacks bf16.",
                hint="pass --precision auto or --precision fp32.",
            )
        return True
    return bf16_fast(device)


@contextlib.contextmanager
def autocast(device: torch.device, bf16: bool) -> Iterator[None]:
    if bf16:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
