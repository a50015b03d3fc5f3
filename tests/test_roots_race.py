"""The allowed roots hold for the file actually read: a path swapped between the check and the open is caught
on the opened descriptor, and the refusal does not say where the swapped path led."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgq.storage import local
from worker.images.preprocess import ImageError, load_pixels

INSIDE, OUTSIDE = (10, 200, 30), (250, 5, 120)


@pytest.fixture
def layout(tmp_path) -> tuple[Path, Path, Path]:
    """``root/album/pic.png`` (green) inside the root, ``secret/pic.png`` (pink) outside it; returns the three."""
    root, secret = tmp_path / "root", tmp_path / "secret"
    (root / "album").mkdir(parents=True)
    secret.mkdir()
    Image.new("RGB", (64, 48), INSIDE).save(root / "album" / "pic.png")
    Image.new("RGB", (64, 48), OUTSIDE).save(secret / "pic.png")
    return root, root / "album", secret


def _swap_to_link(album: Path, secret: Path) -> None:
    """Put a symlink to ``secret`` where the folder ``album`` was (the attacker's move)."""
    album.rename(album.with_name("album-real"))
    album.symlink_to(secret)


def test_a_folder_swapped_for_a_symlink_after_the_check_is_forbidden(layout, monkeypatch):
    root, album, secret = layout
    check = local.check_allowed

    def check_then_swap(path, roots):
        real = check(path, roots)  # the path checks out: root/album/pic.png...
        _swap_to_link(album, secret)  # ...and only then does album lead outside
        return real

    monkeypatch.setattr(local, "check_allowed", check_then_swap)
    with pytest.raises(ImageError) as caught:
        load_pixels(str(album / "pic.png"), allowed_roots=(str(root),))
    assert caught.value.code == "forbidden"
    assert "secret" not in caught.value.message  # nothing about where the link points


def test_the_descriptors_path_is_what_the_kernel_opened(layout):
    root, album, secret = layout
    _swap_to_link(album, secret)
    with open(album / "pic.png", "rb") as file:
        assert local.opened_path(file.fileno()) == str((secret / "pic.png").resolve())


def test_a_link_swapped_back_and_forth_never_yields_the_outside_picture(layout):
    root, album, secret = layout
    real = album.with_name("album-real")
    album.rename(real)
    stop = threading.Event()

    def attacker():
        link_in, link_out = root / ".in", root / ".out"
        link_in.symlink_to(real)
        link_out.symlink_to(secret)
        while not stop.is_set():  # atomically point album inside, then outside, again and again
            os.replace(link_in, album)
            link_in.symlink_to(real)
            os.replace(link_out, album)
            link_out.symlink_to(secret)

    thread = threading.Thread(target=attacker, daemon=True)
    thread.start()
    outcomes = []
    try:
        for _ in range(400):
            try:
                pixels = load_pixels(str(album / "pic.png"), allowed_roots=(str(root),))
                outcomes.append(tuple(int(v) for v in pixels[0, 0]))
            except ImageError as exc:
                outcomes.append(exc.code)
    finally:
        stop.set()
        thread.join()
    assert tuple(OUTSIDE) not in outcomes
    assert set(outcomes) <= {tuple(INSIDE), "forbidden", "missing"}
    assert "forbidden" in outcomes and tuple(INSIDE) in outcomes  # the race was run, both ways
    assert np.array_equal(load_pixels(str(real / "pic.png"), allowed_roots=(str(root),))[0, 0], INSIDE)
