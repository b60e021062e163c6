"""The local server's SECRET_KEY: one Label Studio reads back, so tokens outlive a restart."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import environ  # django-environ: what Label Studio reads its `.env` with

from annotate2model.labelstudio.server import settle_secret_key


def _keys(path: Path) -> list[str]:
    return [line.split("=", 1)[1] for line in path.read_text().splitlines() if "SECRET_KEY" in line]


def _as_label_studio_reads(path: Path) -> str:
    """The key Label Studio would start with: its own reading of `.env`."""
    saved = dict(os.environ)
    os.environ.pop("SECRET_KEY", None)
    try:
        environ.Env.read_env(str(path))
        return str(environ.Env().str("SECRET_KEY", ""))
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_a_key_starting_with_dollar_reads_back_empty(tmp_path: Path) -> None:
    # The trap itself: without it, the fix below would guard against nothing.
    env = tmp_path / ".env"
    env.write_text("\nSECRET_KEY=$-@(76abc#x\n")
    assert _as_label_studio_reads(env) == ""
    # Its last SECRET_KEY line is the one that counts.
    env.write_text("\nSECRET_KEY=$-@(76abc#x\n\nSECRET_KEY=k9#x(w+&e\n")
    assert _as_label_studio_reads(env) == "k9#x(w+&e"


def test_first_start_gets_a_readable_key(tmp_path: Path) -> None:
    assert settle_secret_key(tmp_path) is True
    env = tmp_path / ".env"
    (key,) = _keys(env)
    assert len(key) >= 50 and not key.startswith("$")
    assert _as_label_studio_reads(env) == key
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    # Settled once, left alone: the same key at every later start.
    assert settle_secret_key(tmp_path) is False
    assert _keys(env) == [key]


def test_a_readable_key_of_label_studio_is_kept(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    for text in (
        "\nSECRET_KEY=k9#x(w+&etysr3lj^w^6mjm=i76vu^a-l=^1jmzy(yi)k\n",
        # Drawn again after a `$` key: the newer line is read, and kept.
        "\nSECRET_KEY=$-@(76first\n\nSECRET_KEY=k9#x(w+&etysr3lj\n",
    ):
        env.write_text(text)
        assert settle_secret_key(tmp_path) is False
        assert env.read_text() == text


def test_an_unreadable_key_is_replaced_before_the_next_start(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    for text in (
        "DEBUG=false\n\nSECRET_KEY=$-@(76first\n",
        "DEBUG=false\nSECRET_KEY=older\nSECRET_KEY='$quoted'\n",
        "DEBUG=false\nSECRET_KEY=\n",
    ):
        env.write_text(text)
        assert settle_secret_key(tmp_path) is True
        (key,) = _keys(env)
        assert "$" not in key and _as_label_studio_reads(env) == key
        assert env.read_text().startswith("DEBUG=false\n")


def test_bytes_that_are_not_utf8_are_kept(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_bytes(b"NOTE=caf\xe9\nSECRET_KEY=$x\n")
    assert settle_secret_key(tmp_path) is True
    data = env.read_bytes()
    assert data.startswith(b"NOTE=caf\xe9\nSECRET_KEY=") and b"$x" not in data
