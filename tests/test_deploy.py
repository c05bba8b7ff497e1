"""`edgecls deploy`: a Raspberry Pi 4 bundle built on this host holds aarch64 wheels for Python 3.11,
the artifact with its manifest and check images, and checksums; an existing --out is replaced only
when it is a bundle deploy wrote. The installer is tests/test_install.py; the end-to-end run on an
emulated Raspberry Pi is `make test-device` (tests/device/)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import zipfile

import pytest

from tests.conftest import run_cli

MODEL = "mobilenet_v2_1.0_224_quant.tflite"
PHOTOS = ("parrot.jpg", "grace_hopper.bmp", "cat.bmp")
HEAVY = ("tensorflow", "keras", "jax", "torch", "onnxruntime", "openvino")


def deploy_args(coral, assets, out, *more):
    photos = [a for p in PHOTOS for a in ("--check-image", assets / "images/imagenet-photos" / p)]
    return ["deploy", coral / MODEL, "--out", out, "--labels", coral / "imagenet_labels.txt", *photos, *more]


@pytest.fixture(scope="module")
def pi_bundle(tmp_path_factory, coral, assets):
    out = tmp_path_factory.mktemp("pi") / "bundle"
    result = run_cli(*deploy_args(coral, assets, out, "--target", "raspberrypi4"))
    assert result.returncode == 0, result.stderr
    return out, result


def test_raspberrypi4_bundle(pi_bundle):
    out, result = pi_bundle
    doc = json.loads((out / "bundle.json").read_text())
    assert doc["device"]["machine"] == "aarch64" and doc["device"]["python"] == "3.11"
    assert doc["requirement"].startswith("edgecls[runtime]==")
    wheels = sorted(p.name for p in (out / "wheels").glob("*.whl"))
    names = {w.split("-")[0].lower().replace("_", "-") for w in wheels}
    assert {"edgecls", "numpy", "opencv-python-headless", "ai-edge-litert"} <= names
    assert not any(n.startswith(HEAVY) for n in names), names
    for wheel in wheels:  # built for the Pi's CPU and Python, or pure Python
        python, abi, plat = wheel[:-4].split("-")[-3:]
        assert plat == "any" or "aarch64" in plat, wheel
        tags = python.split(".")
        assert ("py3" in tags and abi == "none") or (abi == "cp311" and "cp311" in tags) or \
            (abi == "abi3" and any(t.startswith("cp3") and int(t[3:]) <= 11 for t in tags)), wheel
    own = next((out / "wheels").glob("edgecls-*.whl"))
    with zipfile.ZipFile(own) as z:
        assert {"edgecls/deploy/install.sh", "edgecls/target_profiles/raspberrypi4.toml"} <= set(z.namelist())
    # The size line and what dominates it: the largest wheel comes first.
    largest = max(doc["wheels"], key=lambda w: w["bytes"])["name"]
    assert "MB" in result.stdout and largest in result.stdout.split("┃ component")[1].splitlines()[2]
    assert doc["sizes"]["installed_bytes"] > doc["sizes"]["wheels_bytes"]


def test_bundle_checksums_cover_every_file(pi_bundle):
    out, _ = pi_bundle
    listed = {}
    for line in (out / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"SHA256SUMS"}
    assert set(listed) == files
    for name, digest in listed.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name
    assert os.access(out / "install.sh", os.X_OK)
    doc = json.loads((out / "bundle.json").read_text())
    assert (doc["device"]["machine"], doc["device"]["python"]) == ("aarch64", "3.11")
    assert [a["name"] for a in doc["artifacts"]] == [MODEL]
    assert not (out / "bundle.env").exists()  # install.sh reads bundle.json as data: no shell file to source


def test_foreign_model_gets_a_manifest_and_check_images(pi_bundle, coral):
    out, _ = pi_bundle
    manifest = json.loads((out / "artifacts" / f"{MODEL}.json").read_text())
    assert manifest["quantization"] == "int8" and len(manifest["labels"]) == 1001
    assert [c["top1"] for c in manifest["checks"]] == ["macaw", "military uniform", "Egyptian cat"]
    assert all((out / "artifacts" / c["image"]).is_file() for c in manifest["checks"])
    assert not (coral / f"{MODEL}.json").exists()  # the input folder is never written to


def test_tar_gz_and_offline_workstation(pi_bundle, coral, assets, tmp_path):
    """A .tar.gz bundle, fetched with --find-links only (a workstation without network), and an
    earlier bundle folder replaced, while a folder that is not a bundle is refused."""
    bundle, _ = pi_bundle
    wheels = bundle / "wheels"
    own = next(wheels.glob("edgecls-*.whl"))
    offline = ["--target", "raspberrypi4", "--find-links", wheels, "--edgecls-wheel", own]
    archive = tmp_path / "pi.tar.gz"
    assert run_cli(*deploy_args(coral, assets, archive, *offline)).returncode == 0
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert "edgecls-bundle-raspberrypi4/install.sh" in members and members["edgecls-bundle-raspberrypi4/install.sh"].mode & 0o111
    assert f"edgecls-bundle-raspberrypi4/artifacts/{MODEL}.checks/0.png" in members
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pi.tar.gz"]  # no staging folder left
    from edgecls.deploy.owned import not_ours

    assert not_ours(archive, "edgecls.bundle/1", archive=True) is None  # a later build may replace it
    folder = tmp_path / "folder"
    assert run_cli(*deploy_args(coral, assets, folder, *offline)).returncode == 0
    again = run_cli(*deploy_args(coral, assets, folder, *offline, "--service", "stream", "--source", "0"))
    assert again.returncode == 0 and json.loads((folder / "bundle.json").read_text())["service"]["kind"] == "stream"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    refused = run_cli(*deploy_args(coral, assets, other, *offline))
    assert refused.returncode == 2 and "not an edgecls bundle" in refused.stderr


def test_out_replaces_only_a_bundle_deploy_wrote(pi_bundle, coral, assets, tmp_path):
    """--out names an existing folder or archive: replaced only when it holds exactly what deploy
    wrote there (its SHA256SUMS, unchanged); a bundle.json beside the user's files is not enough."""
    bundle, _ = pi_bundle
    offline = ["--target", "raspberrypi4", "--find-links", bundle / "wheels", "--edgecls-wheel",
               next((bundle / "wheels").glob("edgecls-*.whl"))]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "bundle.json").write_text('{"schema": "edgecls.bundle/1"}')
    (mine / "notes.txt").write_text("my notes")
    refused = run_cli(*deploy_args(coral, assets, mine, *offline))
    assert refused.returncode == 2 and "not an edgecls bundle" in refused.stderr, refused.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["bundle.json", "notes.txt"]
    assert (mine / "notes.txt").read_text() == "my notes"
    # A bundle deploy wrote (a copy of one: hard links), with a file of the user's added, or one of
    # its files changed: kept.
    built = tmp_path / "built"
    shutil.copytree(bundle, built, copy_function=os.link)
    (built / "notes.txt").write_text("my notes")
    refused = run_cli(*deploy_args(coral, assets, built, *offline))
    assert refused.returncode == 2 and "did not write there (notes.txt)" in refused.stderr, refused.stderr
    assert (built / "notes.txt").read_text() == "my notes"
    (built / "notes.txt").unlink()
    (built / "README.txt").unlink()  # not through the link: the module's bundle stays as built
    (built / "README.txt").write_text("edited")
    refused = run_cli(*deploy_args(coral, assets, built, *offline))
    assert refused.returncode == 2 and "changed or removed since" in refused.stderr and "README.txt" in refused.stderr
    assert (built / "README.txt").read_text() == "edited"
    # A file named like an archive that deploy did not write is not overwritten either.
    archive = tmp_path / "old.tar.gz"
    archive.write_bytes(b"my backup")
    refused = run_cli(*deploy_args(coral, assets, archive, *offline))
    assert refused.returncode == 2 and "not a .tar.gz that edgecls deploy wrote" in refused.stderr
    assert archive.read_bytes() == b"my backup"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["built", "mine", "old.tar.gz"]  # no staging left


def test_deploy_errors(coral, tmp_path):
    folder = run_cli("deploy", coral, "--target", "raspberrypi4", "--out", tmp_path / "b")
    assert folder.returncode == 2 and f"{coral}: is a folder, expected a model file" in folder.stderr
    bare = run_cli("deploy", coral / MODEL, "--target", "raspberrypi4", "--out", tmp_path / "b")
    assert bare.returncode == 2 and "no manifest" in bare.stderr and "--labels FILE" in bare.stderr
    laptop = run_cli("deploy", coral / MODEL, "--target", "laptop-cpu", "--out", tmp_path / "b",
                     "--labels", coral / "imagenet_labels.txt")
    assert laptop.returncode == 2 and "names no device platform" in laptop.stderr and "--platform TAG" in laptop.stderr
    stream = run_cli("deploy", coral / MODEL, "--target", "raspberrypi4", "--out", tmp_path / "b",
                     "--service", "stream", "--labels", coral / "imagenet_labels.txt")
    assert stream.returncode == 2 and "--service stream needs --source" in stream.stderr
    inside = run_cli("deploy", coral / MODEL, "--target", "raspberrypi4", "--out", coral,
                     "--labels", coral / "imagenet_labels.txt")
    assert inside.returncode == 2 and "never replaces its inputs" in inside.stderr
    pi = ["deploy", coral / MODEL, "--target", "raspberrypi4", "--out", tmp_path / "b", "--labels",
          coral / "imagenet_labels.txt"]
    open_host = run_cli(*pi, "--service", "serve", "--host", "0.0.0.0")
    assert open_host.returncode == 2 and "needs --token-file PATH" in open_host.stderr
    relative = run_cli(*pi, "--service", "serve", "--host", "0.0.0.0", "--token-file", "token.txt")
    assert relative.returncode == 2 and "expected an absolute path on the device" in relative.stderr
    no_service = run_cli(*pi, "--host", "0.0.0.0", "--token-file", "/etc/edgecls/token")
    assert no_service.returncode == 2 and "add --service serve" in no_service.stderr
    assert not list(tmp_path.iterdir())


def test_errors_are_one_line_off_a_terminal(coral, tmp_path):
    """Written to a pipe or a log, an error is one line however long its paths (Rich would
    hard-wrap it at 80 columns, and where the break falls would move with the checkout's path)."""
    deep = tmp_path / ("a-folder-with-a-long-name-" * 6) / ("and-another-one-" * 6)
    deep.mkdir(parents=True)
    shutil.copy(coral / MODEL, deep / MODEL)
    inside = run_cli("deploy", deep / MODEL, "--target", "raspberrypi4", "--out", deep,
                     "--labels", coral / "imagenet_labels.txt")
    assert inside.returncode == 2 and len(str(deep)) > 200
    lines = [line for line in inside.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "a bundle never replaces its inputs" in lines[0], lines


def test_serve_service_on_the_network_reads_its_token_from_a_device_file(coral, assets, tmp_path):
    out = tmp_path / "b"
    built = run_cli(*deploy_args(coral, assets, out, "--target", "raspberrypi4", "--service", "serve", "--source", "0",
                                 "--host", "0.0.0.0", "--token-file", "/etc/edgecls/token"))
    assert built.returncode == 0, built.stderr
    args = json.loads((out / "bundle.json").read_text())["service"]["args"]
    assert args[args.index("--host") + 1] == "0.0.0.0" and args[args.index("--token-file") + 1] == "/etc/edgecls/token"
    assert not any("token" in p.name for p in out.rglob("*") if p.is_file())  # the token itself never travels
