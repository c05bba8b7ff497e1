"""The decode-once image cache: hit, miss, invalidation, bad files, cleanup; real flowers photos."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from edgecls import data
from edgecls.cache import build_cache, cache_root, clean_caches
from edgecls.preprocess import Preprocessing


@pytest.fixture()
def small_set(flowers, tmp_path):
    """12 real photos in two classes, plus room to add bad files."""
    root = tmp_path / "set"
    folder = data.scan(flowers)
    for cls in ("daisy", "roses"):
        (root / cls).mkdir(parents=True)
        for f in [p for p in folder.files if p.parent.name == cls][:6]:
            shutil.copy2(f, root / cls / f.name)
    return root


def test_miss_then_hit_gives_the_loaders_pixels(small_set, tmp_path):
    p = Preprocessing.named("tf", (64, 64))
    folder = data.scan(small_set)
    first = build_cache(folder.files, p, root=tmp_path / "c", workers=2)
    assert first.built and first.ok.all() and first.images.shape == (12, 64, 64, 3)
    second = build_cache(folder.files, p, root=tmp_path / "c", workers=2)
    assert not second.built and second.path == first.path
    reference = data.load_images(folder, range(12), p).images
    assert np.array_equal(np.asarray(second.images), reference)  # same pixels as the one Preprocessing
    rows = np.array([0, 1, 2, 5, 9, 10, 11])  # runs of consecutive rows and single ones
    assert np.array_equal(second.read(rows), reference[rows])
    # Another preprocessing is another cache.
    other = build_cache(folder.files, Preprocessing.named("tf", (48, 48)), root=tmp_path / "c", workers=1)
    assert other.built and other.path != first.path


def test_touching_a_file_invalidates(small_set, tmp_path):
    p = Preprocessing.named("unit", (32, 32))
    folder = data.scan(small_set)
    first = build_cache(folder.files, p, root=tmp_path / "c", workers=1)
    st = folder.files[3].stat()
    os.utime(folder.files[3], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    again = build_cache(folder.files, p, root=tmp_path / "c", workers=1)
    assert again.built and again.path != first.path
    # A file list that differs (one photo removed) is a miss too.
    assert build_cache(folder.files[:-1], p, root=tmp_path / "c", workers=1).built


def test_bad_files_are_marked_and_reported_on_every_hit(small_set, tmp_path):
    (small_set / "daisy" / "truncated.jpg").write_bytes(
        (small_set / "roses").iterdir().__next__().read_bytes()[:300])
    (small_set / "roses" / "notes.txt").write_text("not a picture")
    folder = data.scan(small_set)
    p = Preprocessing.named("tf", (32, 32))
    for expect_built in (True, False):
        cache = build_cache(folder.files, p, root=tmp_path / "c", workers=2)
        assert cache.built is expect_built
        bad = {path.name: reason for path, reason in cache.skipped}
        assert set(bad) == {"truncated.jpg", "notes.txt"}
        assert all("not a readable image" in r for r in bad.values()), bad
        assert cache.ok.sum() == 12 and not cache.ok[folder.files.index(small_set / "roses" / "notes.txt")]


def test_killed_build_is_never_read_and_clean_removes_everything(small_set, tmp_path):
    p = Preprocessing.named("tf", (32, 32))
    folder = data.scan(small_set)
    cache = build_cache(folder.files, p, root=tmp_path / "c", workers=1)
    (cache.path / "meta.json").unlink()  # as if killed before the build finished
    assert build_cache(folder.files, p, root=tmp_path / "c", workers=1).built
    (tmp_path / "c" / ".building-images-x-1").mkdir()
    removed, freed = clean_caches(tmp_path / "c")
    assert removed == 2 and freed >= 12 * 32 * 32 * 3
    assert not any((tmp_path / "c").iterdir())


def test_cache_location_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGECLS_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv("EDGECLS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "edgecls"
