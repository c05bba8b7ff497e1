"""`edgecls deploy`: a Raspberry Pi 4 bundle built on this host holds aarch64 wheels for Python 3.11,
the artifact with its manifest and check images, and checksums; a bundle for this host installs
from its own wheels (pip --no-index), runs the doctor, keeps the previous release and rolls back.
The end-to-end run on an emulated Raspberry Pi is `make test-device` (tests/device/)."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

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
    env = (out / "bundle.env").read_text()
    assert "MACHINE=aarch64" in env and "PYTHON_VERSION=3.11" in env and f"ARTIFACTS={MODEL}" in env


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
    folder = tmp_path / "folder"
    assert run_cli(*deploy_args(coral, assets, folder, *offline)).returncode == 0
    again = run_cli(*deploy_args(coral, assets, folder, *offline, "--service", "stream", "--source", "0"))
    assert again.returncode == 0 and "SERVICE_KIND=stream" in (folder / "bundle.env").read_text()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    refused = run_cli(*deploy_args(coral, assets, other, *offline))
    assert refused.returncode == 2 and "not an edgecls bundle" in refused.stderr


def test_deploy_errors(coral, tmp_path):
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


def _install(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    # The installer looks for python3.X on PATH: this interpreter's, whose wheels the bundle holds.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "200"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(bundle / "install.sh"), *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow  # builds two fresh virtual environments (pip install from the bundles), as runtime_venv does
def test_install_offline_keep_previous_and_roll_back(pi_bundle, coral, assets, tmp_path):
    """Two bundles for this machine installed one after the other (the second with a serve service,
    whose unit is run as written), then a rollback; a damaged bundle refused."""
    machine, python = platform.machine().lower(), f"{sys.version_info.major}.{sys.version_info.minor}"
    glibc = platform.libc_ver()[1] or "2.31"
    # One tag: deploy widens manylinux_2_N to every older level, as the machine's glibc runs them all.
    host = ["--target", "laptop-cpu", "--python-version", python, "--platform", f"manylinux_{glibc.replace('.', '_')}_{machine}",
            "--edgecls-wheel", next((pi_bundle[0] / "wheels").glob("edgecls-*.whl"))]
    photos = assets / "images/imagenet-photos"
    first, second = tmp_path / "b1", tmp_path / "b2"
    assert run_cli(*deploy_args(coral, assets, first, *host)).returncode == 0
    built = run_cli(*deploy_args(coral, assets, second, *host, "--service", "serve", "--source", photos))
    assert built.returncode == 0, built.stderr
    assert "serve" in json.loads((second / "bundle.json").read_text())["extras"]  # aiohttp & co. on the device
    prefix, units = tmp_path / "opt", tmp_path / "units"
    ids = [json.loads((b / "bundle.json").read_text())["id"] for b in (first, second)]

    done = _install(first, "--prefix", str(prefix), "--unit-dir", str(units))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ready: every needed check passed" in done.stdout and "3/3 check images" in done.stdout
    assert os.readlink(prefix / "current") == f"releases/{ids[0]}" and not (units / "edgecls.service").exists()
    answer = subprocess.run([str(prefix / "current/venv/bin/edgecls"), "predict", str(prefix / "current/artifacts" / MODEL),
                             str(photos / "parrot.jpg"), "-k", "1"], capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0 and "macaw" in answer.stdout, answer.stderr

    done = _install(second, "--prefix", str(prefix), "--unit-dir", str(units))
    assert done.returncode == 0, done.stdout + done.stderr
    assert os.readlink(prefix / "current") == f"releases/{ids[1]}"
    assert os.readlink(prefix / "previous") == f"releases/{ids[0]}"
    _serve_as_the_unit_says(units / "edgecls.service", prefix, photos, tmp_path)

    back = _install(prefix / "current", "--rollback", "--prefix", str(prefix), "--unit-dir", str(units))
    assert back.returncode == 0, back.stderr
    assert os.readlink(prefix / "current") == f"releases/{ids[0]}"
    assert os.readlink(prefix / "previous") == f"releases/{ids[1]}"

    wheel = next((first / "wheels").glob("numpy-*.whl"))
    wheel.write_bytes(wheel.read_bytes()[:-10])
    damaged = _install(first, "--prefix", str(prefix), "--unit-dir", str(units))
    assert damaged.returncode != 0 and "the bundle is damaged" in damaged.stderr and wheel.name in damaged.stderr


def _serve_as_the_unit_says(unit: Path, prefix: Path, photos: Path, tmp_path: Path) -> None:
    """The installer's unit (written by the release's own `edgecls serve-unit`) runs `edgecls serve`
    of the current release; its command line, started as written (only the port and the state
    folder moved to this test's), serves the bundled model from the installed environment."""
    import shlex

    from serve_util import Server

    text = unit.read_text()
    python = f"{prefix}/current/venv/bin/python"
    args = [f"{prefix}/current/artifacts/{MODEL}", str(photos), "--port", "8080", "--target", "laptop-cpu",
            "--state-dir", "/var/lib/edgecls"]
    assert f"ExecStart={shlex.join([python, '-m', 'edgecls.cli', 'serve', *args])}\n" in text
    assert "SuccessExitStatus=143" in text and "User=" in text and f"WorkingDirectory={prefix}\n" in text
    verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr  # systemd's own reading of the unit
    server = Server(*args, "--state-dir", tmp_path / "state", "--fps", "5", token=None, python=python, cwd=prefix)
    try:
        server.wait_ready(True, timeout=60)
        status, _, body = server.request("POST", "/classify?k=1", (photos / "parrot.jpg").read_bytes(),
                                         headers={"Content-Type": "image/jpeg"})
        assert status == 200 and json.loads(body)["top_k"][0][0] == "macaw", body
    finally:
        assert server.stop() == 0, "".join(server.log)
