"""Precision choice on the CPU: `auto` takes bf16 only where the hardware runs it natively."""

from __future__ import annotations

import pytest
import torch

from annotate2model.training.features import device as dev

CPU = torch.device("cpu")


def _cpu(monkeypatch: pytest.MonkeyPatch, *, emulated: bool, avx512_bf16: bool, amx: bool) -> None:
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: emulated)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


def test_auto_avoids_emulated_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    # Plain AVX-512: oneDNN runs bf16 by emulation, slower than fp32.
    _cpu(monkeypatch, emulated=True, avx512_bf16=False, amx=False)
    assert dev.use_bf16(CPU, "auto") is False
    assert dev.use_bf16(CPU, "bf16") is True  # asked for: it works, only slower
    assert dev.use_bf16(CPU, "fp32") is False


@pytest.mark.parametrize(("avx512_bf16", "amx"), [(True, False), (False, True), (True, True)])
def test_auto_takes_native_bf16(
    monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool
) -> None:
    _cpu(monkeypatch, emulated=True, avx512_bf16=avx512_bf16, amx=amx)
    assert dev.use_bf16(CPU, "auto") is True


def test_bf16_asked_for_where_there_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu(monkeypatch, emulated=False, avx512_bf16=False, amx=False)
    assert dev.use_bf16(CPU, "auto") is False
    with pytest.raises(dev.InputError, match="lacks bf16") as info:
        dev.use_bf16(CPU, "bf16")
    assert info.value.hint is not None and "--precision" in info.value.hint
