"""Which of a Label Studio server's own image URLs sync may read from this disk instead."""

from __future__ import annotations

from pathlib import Path

from annotate2model.labelstudio.connection import LocalFiles


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "photos"
    (root / "cats").mkdir(parents=True)
    (root / "cats" / "a b.jpg").write_bytes(b"jpeg")
    media = tmp_path / "ls" / "media"
    (media / "upload" / "3").mkdir(parents=True)
    (media / "upload" / "3" / "f00-x.png").write_bytes(b"png")
    (tmp_path / "secret.txt").write_text("token")
    return root, media


def test_own_server_urls_map_into_their_folders(tmp_path: Path) -> None:
    root, media = _folders(tmp_path)
    local = LocalFiles(same_server=True, root=root, media_root=media)
    assert local.path_of("/data/local-files/?d=cats/a%20b.jpg") == root / "cats" / "a b.jpg"
    assert local.path_of("/data/upload/3/f00-x.png") == media / "upload" / "3" / "f00-x.png"


def test_anything_else_goes_through_http(tmp_path: Path) -> None:
    root, media = _folders(tmp_path)
    local = LocalFiles(same_server=True, root=root, media_root=media)
    for url in (
        "/data/local-files/?d=../secret.txt",  # leaves the files root
        "/data/local-files/?d=/etc/passwd",  # absolute
        "/data/upload/../../secret.txt",
        "/data/upload/3/missing.png",  # not on this disk: the server may still have it
        "/data/local-files/?d=",
        "/data/local-files/",
        "http://127.0.0.1:8080/data/upload/3/f00-x.png",
        "data:image/png;base64,AAAA",
        "/api/projects/3",
    ):
        assert local.path_of(url) is None, url
    # Another server (a remote one, or not this workspace's): never the local disk.
    other = LocalFiles(same_server=False, root=root, media_root=media)
    assert other.path_of("/data/local-files/?d=cats/a%20b.jpg") is None
    # No files root: Local Files URLs are not ours to read.
    uploads_only = LocalFiles(same_server=True, root=None, media_root=media)
    assert uploads_only.path_of("/data/local-files/?d=cats/a%20b.jpg") is None
