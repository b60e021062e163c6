"""imagenet_weights_status: cached (a file in torch hub's cache), downloadable (the host answers),
offline (it does not), against a temporary TORCH_HOME and real local sockets and HTTP servers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from annotate2model.errors import InputError
from annotate2model.training.features import weights
from annotate2model.training.features.weights import imagenet_weights_status


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache (torch.hub.get_dir() reads TORCH_HOME when called)."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


class _Head(BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:
        self.send_response(200 if self.path.endswith(".pth") else 404)
        self.send_header("Content-Length", "46830571")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def weights_host() -> Iterator[str]:
    """http://127.0.0.1:<port>: a real HTTP server that answers HEAD for .pth files."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Head)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _serve_from(monkeypatch: pytest.MonkeyPatch, base: str) -> None:
    url = f"{base}/models/resnet18-f37072fd.pth"
    monkeypatch.setattr(weights, "imagenet_url", lambda _backbone: url)


def test_a_file_in_the_hub_cache_is_cached(torch_home: Path) -> None:
    checkpoint = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"weights")
    status = imagenet_weights_status("resnet18")
    assert status.state == "cached"
    assert status.checkpoint == checkpoint
    assert checkpoint.name in status.detail


def test_not_cached_and_the_host_answers_is_downloadable(
    torch_home: Path, weights_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _serve_from(monkeypatch, weights_host)
    status = imagenet_weights_status("resnet18")
    assert status.state == "downloadable"
    assert status.checkpoint == torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert not status.checkpoint.exists()


def test_a_host_that_refuses_is_offline(torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port any more: the connection is refused.
    _serve_from(monkeypatch, f"http://127.0.0.1:{port}")
    status = imagenet_weights_status("resnet18")
    assert status.state == "offline"
    assert f"127.0.0.1:{port} cannot be reached" in status.detail
    assert "\n" not in status.detail


def test_a_host_that_never_answers_is_offline_within_the_timeout(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Listens (the connection is made) but never reads nor answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        _serve_from(monkeypatch, f"http://127.0.0.1:{silent.getsockname()[1]}")
        status = imagenet_weights_status("resnet18", timeout=0.3)
    assert status.state == "offline"


def test_a_missing_file_answer_is_offline(
    torch_home: Path, weights_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = f"{weights_host}/models/gone"
    monkeypatch.setattr(weights, "imagenet_url", lambda _backbone: gone)
    status = imagenet_weights_status("resnet18")
    assert status.state == "offline"
    assert "HTTP 404" in status.detail


def test_an_unknown_backbone_is_refused() -> None:
    with pytest.raises(InputError, match="unknown backbone 'resnet9'"):
        imagenet_weights_status("resnet9")


def test_the_url_is_torchvisions_default() -> None:
    assert weights.imagenet_url("resnet18").endswith("/resnet18-f37072fd.pth")
    assert weights.imagenet_url("vgg16").endswith("/vgg16-397923af.pth")


def test_the_checkpoint_is_named_as_torch_hub_names_it() -> None:
    assert weights.imagenet_checkpoint_path("vgg16").name == "vgg16-397923af.pth"
