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
    (small_set / "roses" / "notes.png").write_text("not a picture")
    folder = data.scan(small_set)
    p = Preprocessing.named("tf", (32, 32))
    for expect_built in (True, False):
        cache = build_cache(folder.files, p, root=tmp_path / "c", workers=2)
        assert cache.built is expect_built
        bad = {path.name: reason for path, reason in cache.skipped}
        assert set(bad) == {"truncated.jpg", "notes.png"}
        assert all("not a readable image" in r for r in bad.values()), bad
        assert cache.ok.sum() == 12 and not cache.ok[folder.files.index(small_set / "roses" / "notes.png")]


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


# --- issue 16 -------------------------------------------------------------------------------------
def _same_size_bmps(small_set) -> tuple[bytes, bytes]:
    """Two different real photos as BMPs of one size: equal byte counts, different pixels."""
    import cv2

    photos = sorted((small_set / "daisy").iterdir())[:2]
    encoded = [cv2.imencode(".bmp", cv2.resize(cv2.imread(str(p)), (40, 30)))[1].tobytes() for p in photos]
    assert len(encoded[0]) == len(encoded[1]) and encoded[0] != encoded[1]
    return encoded[0], encoded[1]


@pytest.mark.parametrize("how", ["rewritten", "renamed over"])
def test_photo_replaced_by_one_of_the_same_size_and_mtime_is_a_miss(small_set, tmp_path, how):
    """The probe's case (item 2): each photo replaced by another of the same byte size, its
    modification time put back (`touch -r`). The key used to be path + size + mtime: a hit with
    the old pixels."""
    old, new = _same_size_bmps(small_set)
    photo = small_set / "daisy" / "x.bmp"
    photo.write_bytes(old)
    p = Preprocessing.named("unit", (30, 40))
    folder = data.scan(small_set)
    first = build_cache(folder.files, p, root=tmp_path / "c", workers=1)
    st = photo.stat()
    if how == "rewritten":
        photo.write_bytes(new)
    else:
        (small_set / "incoming.bmp").write_bytes(new)
        os.replace(small_set / "incoming.bmp", photo)
    os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns))  # touch -r
    assert photo.stat().st_size == st.st_size and photo.stat().st_mtime_ns == st.st_mtime_ns
    again = build_cache(folder.files, p, root=tmp_path / "c", workers=1)
    assert again.built and again.path != first.path
    row = folder.files.index(photo)
    assert np.array_equal(again.read([row])[0], p.load(photo)) and not np.array_equal(again.read([row])[0],
                                                                                        first.read([row])[0])


def test_file_names_that_are_not_utf8(small_set, tmp_path):
    """A Linux file name is bytes: `bad\\xffname.jpg` decodes to a surrogate that UTF-8 cannot
    encode. The cache key hashed str(path).encode() (item 9: UnicodeEncodeError); the split record
    goes through strict JSON and back."""
    import json

    bad = small_set / "daisy" / os.fsdecode(b"bad\xffname.jpg")
    shutil.copy(next((small_set / "roses").iterdir()), bad)
    folder = data.scan(small_set)
    p = Preprocessing.named("tf", (32, 32))
    cache = build_cache(folder.files, p, root=tmp_path / "c", workers=1)
    row = folder.files.index(bad)
    assert cache.ok.all() and np.array_equal(cache.read([row])[0], p.load(bad))
    split = data.split_indices(folder.targets, 0.5, seed=1)
    record = json.loads(json.dumps(data.split_record(folder, split), allow_nan=False))
    again = data.recorded_split(folder, {"files": record})
    assert all(np.array_equal(again[k], split[k]) for k in ("train", "val", "test"))


def test_cache_workers_stopped_by_the_pool_print_nothing(small_set, tmp_path):
    """Forked workers inherited the command line's SIGTERM handler; the pool's terminate then made
    every successful build print `Process ForkPoolWorker-1: Traceback ... KeyboardInterrupt` (item 13)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = ("import sys\nfrom edgecls.cli.exits import install_sigterm\nfrom edgecls import data\n"
              "from edgecls.cache import build_cache\nfrom edgecls.preprocess import Preprocessing\n"
              "install_sigterm()\nfolder = data.scan(sys.argv[1])\n"
              "c = build_cache(folder.files, Preprocessing.named('tf', (32, 32)), root=sys.argv[2], workers=2)\n"
              "print(c.built, int(c.ok.sum()))\n")
    result = subprocess.run([sys.executable, "-c", script, str(small_set), str(tmp_path / "c")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.split() == ["True", "12"], result.stderr
    assert result.stderr == ""


def test_cache_folder_faults_are_clear_errors(small_set, tmp_path, monkeypatch):
    """EDGECLS_CACHE naming a file said only "File exists"; a malformed meta.json raised
    IndexError/AttributeError (item 17)."""
    from edgecls.errors import EdgeclsError

    folder = data.scan(small_set)
    p = Preprocessing.named("tf", (32, 32))
    (tmp_path / "a_file").write_text("x")
    monkeypatch.setenv("EDGECLS_CACHE", str(tmp_path / "a_file"))
    with pytest.raises(EdgeclsError, match=r"a_file: is a file, not a folder \(the image cache folder, from "
                                           r"EDGECLS_CACHE\); set EDGECLS_CACHE to a writable folder"):
        build_cache(folder.files, p)
    monkeypatch.setenv("EDGECLS_CACHE", str(tmp_path / "a_file" / "below"))
    with pytest.raises(EdgeclsError, match="cannot create it .*EDGECLS_CACHE"):
        build_cache(folder.files, p)
    first = build_cache(folder.files, p, root=tmp_path / "c", workers=1)
    for meta in ("[]", '{"format": 1, "count": 12, "bad": [[999, "x"]]}', '{"format": 1, "count": 12, "bad": "x"}',
                 '{"format": 1, "count": 12, "bad": [["0", 1]]}', "{not json"):
        (first.path / "meta.json").write_text(meta)
        rebuilt = build_cache(folder.files, p, root=tmp_path / "c", workers=1)
        assert rebuilt.built and rebuilt.ok.all() and rebuilt.path == first.path
