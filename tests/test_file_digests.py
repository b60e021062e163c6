"""A weights file's SHA-256 is remembered by the file's signature: read once while unchanged,
hashed again the moment it changes, whatever its size and modification time say."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from annotate2model import fsutil
from annotate2model.training.features.weights import digest_memo, resolve_weights


def _count_opens(monkeypatch: pytest.MonkeyPatch, target: Path) -> list[Path]:
    opened: list[Path] = []
    real_open = Path.open

    def spying_open(self: Path, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if self == target:
            opened.append(self)
        return real_open(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "open", spying_open)
    return opened


def test_unchanged_file_is_hashed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights v1" * 1000)
    expected = "sha256:" + hashlib.sha256(weights.read_bytes()).hexdigest()
    memo = digest_memo(tmp_path / "cache")
    opened = _count_opens(monkeypatch, weights)
    first = resolve_weights("resnet18", str(weights), 0, memo)
    second = resolve_weights("resnet18", str(weights), 0, memo)
    assert first.identity == second.identity == expected
    assert len(opened) == 1  # the second run read the memo, not the file


def test_a_changed_file_is_hashed_again_even_with_size_and_mtime_put_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"A" * 4096)
    memo = tmp_path / "memo"
    before = fsutil.file_sha256(weights, memo)
    st = weights.stat()
    # Same size, same modification time: only the change time tells (what `cp -p` or a
    # careless tool would leave).
    with weights.open("r+b") as f:
        f.write(b"B")
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert weights.stat().st_size == st.st_size and weights.stat().st_mtime_ns == st.st_mtime_ns
    after = fsutil.file_sha256(weights, memo)
    assert after != before
    assert after == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_a_replaced_file_is_hashed_again(tmp_path: Path) -> None:
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"one")
    memo = tmp_path / "memo"
    assert fsutil.file_sha256(weights, memo) == hashlib.sha256(b"one").hexdigest()
    replacement = tmp_path / "new.pth"
    replacement.write_bytes(b"two")
    replacement.replace(weights)
    assert fsutil.file_sha256(weights, memo) == hashlib.sha256(b"two").hexdigest()


def test_a_damaged_or_unwritable_memo_only_costs_the_hashing(tmp_path: Path) -> None:
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"content")
    expected = hashlib.sha256(b"content").hexdigest()
    memo = tmp_path / "memo"
    assert fsutil.file_sha256(weights, memo) == expected
    for entry in memo.iterdir():
        entry.write_text('{"path": 3, "signature": "garbage"')
    assert fsutil.file_sha256(weights, memo) == expected
    # A memo folder that cannot be created (a file is in the way).
    blocked = tmp_path / "blocked"
    blocked.write_text("not a folder")
    assert fsutil.file_sha256(weights, blocked) == expected
