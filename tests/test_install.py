"""The bundle's installer, `install.sh`, run as on the device: a bundle for this machine, a
prefix and a unit folder of the test's own.

It checks the bundle (SHA256SUMS, and nothing unlisted) before it reads anything else of it, and
reads bundle.json as data: tampered bundles are refused and nothing they carry runs. The fast
tests give the installer a release that is already built (a stand-in `edgecls` that records what
it is asked and writes a unit naming its arguments), so they run the installer's own logic in
seconds; the slow one builds real releases from the wheels and serves as the unit says."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.test_deploy import MODEL, deploy_args

SMALL = "mobilenet_v1_0.25_128_quant.tflite"
SIGN = "pwned"  # what a command smuggled into a bundle would create


def _host(edgecls_wheel: Path) -> list:
    """deploy options for a bundle this machine installs: its machine, glibc and Python."""
    machine, python = platform.machine().lower(), f"{sys.version_info.major}.{sys.version_info.minor}"
    glibc = platform.libc_ver()[1] or "2.31"
    # One tag: deploy widens manylinux_2_N to every older level, as the machine's glibc runs them all.
    return ["--target", "laptop-cpu", "--python-version", python, "--platform",
            f"manylinux_{glibc.replace('.', '_')}_{machine}", "--edgecls-wheel", edgecls_wheel]


@pytest.fixture(scope="module")
def edgecls_wheel(tmp_path_factory) -> Path:
    from edgecls.deploy.wheels import build_edgecls_wheel

    return build_edgecls_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def host_bundle(tmp_path_factory, coral, assets, edgecls_wheel) -> Path:
    """A serve bundle of the Coral MobileNetV2 for this machine."""
    out = tmp_path_factory.mktemp("host") / "bundle"
    built = run_cli(*deploy_args(coral, assets, out, *_host(edgecls_wheel), "--service", "serve", "--source",
                                 assets / "images/imagenet-photos"))
    assert built.returncode == 0, built.stderr
    return out


def _install(bundle: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # The installer looks for python3.X on PATH: this interpreter's, whose wheels the bundle holds.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(bundle / "install.sh"), *args], capture_output=True, text=True, env=env, timeout=600)


def _copy(bundle: Path, dest: Path) -> Path:
    """A copy of the bundle made of hard links (fast); `_rewrite` replaces a file without
    touching the original."""
    shutil.copytree(bundle, dest, copy_function=os.link)
    return dest


def _rewrite(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def _append(path: Path, data: bytes) -> None:
    before = path.read_bytes() if path.exists() else b""
    path.unlink(missing_ok=True)
    path.write_bytes(before + data)


def _resum(bundle: Path) -> None:
    """SHA256SUMS made to match the files again: a tampering that also rewrote the checksums."""
    lines = []
    for line in (bundle / "SHA256SUMS").read_text().splitlines():
        name = line.split("  ", 1)[1]
        lines.append(f"{hashlib.sha256((bundle / name).read_bytes()).hexdigest()}  {name}")
    _rewrite(bundle / "SHA256SUMS", ("\n".join(lines) + "\n").encode())


def _edit_doc(bundle: Path, edit) -> None:
    doc = json.loads((bundle / "bundle.json").read_text())
    edit(doc)
    _rewrite(bundle / "bundle.json", json.dumps(doc).encode())
    _resum(bundle)


FAKE_EDGECLS = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["FAKE_EDGECLS_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1] == "serve-unit":
    out = sys.argv[sys.argv.index("--out") + 1]
    with open(out, "w") as unit:
        unit.write("ExecStart=" + json.dumps(sys.argv[sys.argv.index("--") + 1:]) + "\\n")
"""


def _built_release(bundle: Path, prefix: Path) -> Path:
    """The release of `bundle` as if installed already: what `build_release` leaves, with a
    stand-in edgecls (no virtual environment to build)."""
    rel = prefix / "releases" / json.loads((bundle / "bundle.json").read_text())["id"]
    (rel / "venv/bin").mkdir(parents=True)
    (rel / "venv/bin/python").symlink_to(sys.executable)
    (rel / "venv/bin/edgecls").write_text(FAKE_EDGECLS)
    (rel / "venv/bin/edgecls").chmod(0o755)
    shutil.copytree(bundle / "artifacts", rel / "artifacts")
    for name in ("bundle.json", "install.sh"):
        shutil.copy2(bundle / name, rel / name)
    (rel / ".built").touch()
    return rel


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_a_tampered_bundle_is_refused_before_anything_it_carries_runs(host_bundle, tmp_path):
    """A command appended to bundle.env (the file older installers sourced), to bundle.json, or
    hidden in one of its values ($(...), backticks, a line break), with or without SHA256SUMS
    rewritten to match: refused before the installer acts, and nothing runs; --help reads only
    the installer itself."""
    sign = tmp_path / SIGN
    command = f"\ntouch {sign}\n".encode()
    cases = {
        "bundle.env appended": lambda b: _append(b / "bundle.env", command),
        "bundle.json appended": lambda b: _append(b / "bundle.json", command),
        "$(...) in the target": lambda b: _edit_doc(b, lambda d: d.update(target=f"x$(touch {sign})")),
        "backticks in the id": lambda b: _edit_doc(b, lambda d: d.update(id=f"`touch {sign}`")),
        "a line break in an argument": lambda b: _edit_doc(b, lambda d: d["service"]["args"].append(f"0\ntouch {sign}")),
        "a line break in a wheel's name": lambda b: _edit_doc(b, lambda d: d["wheels"][0].update(file=f"a\ntouch {sign}")),
    }
    expected = {"bundle.env appended": "SHA256SUMS does not list: bundle.env",
                "bundle.json appended": "the bundle is damaged (copy it again): bundle.json: checksum differs",
                "$(...) in the target": "bundle.json: target is",
                "backticks in the id": "bundle.json: id is",
                "a line break in an argument": "bundle.json: a service argument is",
                "a line break in a wheel's name": "bundle.json and SHA256SUMS list different wheels"}
    for i, (case, tamper) in enumerate(cases.items()):
        bundle = _copy(host_bundle, tmp_path / f"b{i}")
        tamper(bundle)
        assert _install(bundle, "--help").returncode == 0 and not sign.exists(), case
        prefix = tmp_path / f"opt{i}"
        done = _install(bundle, "--prefix", str(prefix), "--unit-dir", str(tmp_path / "units"))
        assert done.returncode == 1 and expected[case] in done.stderr, (case, done.stderr)
        assert not sign.exists(), case
        assert not prefix.exists() and not (tmp_path / "units").exists(), case  # refused before acting


def test_service_arguments_are_data(host_bundle, tmp_path):
    """Shell syntax in a service argument reaches `edgecls serve-unit` as that one argument, and
    runs nowhere (bundle.json rewritten with its checksums, as a tampering or a careless build
    would)."""
    sign = tmp_path / SIGN
    bundle = _copy(host_bundle, tmp_path / "b")
    odd = [f"$(touch {sign})", f"`touch {sign}`", f"it's; touch {sign} & \"quoted\" \\ *"]
    _edit_doc(bundle, lambda d: d["service"]["args"].extend(odd))
    prefix, log = tmp_path / "opt", tmp_path / "calls.log"
    _built_release(bundle, prefix)
    done = _install(bundle, "--prefix", str(prefix), "--unit-dir", str(tmp_path / "units"),
                    env={"FAKE_EDGECLS_LOG": str(log)})
    assert done.returncode == 0, done.stdout + done.stderr
    [doctor, unit] = _calls(log)
    assert doctor[:3] == ["doctor", "--target", "laptop-cpu"] and doctor[-1].endswith(f"artifacts/{MODEL}")
    args = json.loads((bundle / "bundle.json").read_text())["service"]["args"]
    assert unit[0] == "serve-unit" and unit[unit.index("--") + 2:] == args and unit[-3:] == odd
    assert not sign.exists() and not list(Path.cwd().glob(SIGN))


def test_files_the_checksums_do_not_list_are_refused(host_bundle, tmp_path):
    """An extra wheel (with a .pth that would run at every start) in wheels/, or a second bundle
    unpacked over the first: the installer refuses the folder instead of installing a mix."""
    extra = _copy(host_bundle, tmp_path / "extra")
    wheel = extra / "wheels" / "evil-1.0-py3-none-any.whl"
    import zipfile

    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("evil.pth", f"import os; open({str(tmp_path / SIGN)!r}, 'w')\n")
        z.writestr("evil-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: evil\nVersion: 1.0\n")
    over = _copy(host_bundle, tmp_path / "over")
    for old in (over / "wheels").glob("numpy-*.whl"):  # an older bundle's numpy beside this one's
        os.link(old, old.with_name(old.name.replace("numpy-", "numpy-0.")))
    for bundle, name in ((extra, wheel.name), (over, "wheels/numpy-0.")):
        prefix = tmp_path / f"opt-{bundle.name}"
        done = _install(bundle, "--prefix", str(prefix), "--no-service")
        assert done.returncode == 1 and "files that SHA256SUMS does not list" in done.stderr, done.stderr
        assert name in done.stderr and "unpack each bundle into a new, empty folder" in done.stderr
        assert not prefix.exists() and not (tmp_path / SIGN).exists()


def test_rollback_brings_back_the_unit_of_the_release(host_bundle, tmp_path):
    """Two releases with different artifacts and service arguments (the second bundle as a new
    build would differ), then --rollback: the live unit is the first release's again; rolling
    back to a release without a service removes the unit this installer wrote for the other."""
    prefix, units, log = tmp_path / "opt", tmp_path / "units", tmp_path / "calls.log"
    env = {"FAKE_EDGECLS_LOG": str(log)}
    first = _copy(host_bundle, tmp_path / "first")
    second = _copy(host_bundle, tmp_path / "second")
    _edit_doc(second, lambda d: d.update(id="0123456789ab") or d["service"]["args"].extend(["--port", "9090"]))
    plain = _copy(host_bundle, tmp_path / "plain")
    _edit_doc(plain, lambda d: d.update(id="ba9876543210") or d["service"].update(kind=None, args=[]))
    unit = units / "edgecls.service"
    for bundle in (first, second):
        _built_release(bundle, prefix)  # each just before its install (an install prunes all but two releases)
        done = _install(bundle, "--prefix", str(prefix), "--unit-dir", str(units), env=env)
        assert done.returncode == 0 and "is already installed" in done.stdout, done.stdout + done.stderr
    assert '"--port", "9090"]' in unit.read_text()
    back = _install(prefix / "current", "--rollback", "--prefix", str(prefix), "--unit-dir", str(units), env=env)
    assert back.returncode == 0, back.stdout + back.stderr
    assert os.readlink(prefix / "current") == f"releases/{json.loads((first / 'bundle.json').read_text())['id']}"
    assert unit.read_text() == (prefix / "current/edgecls.service").read_text() and "9090" not in unit.read_text()
    assert "service unit written" in back.stdout

    _built_release(plain, prefix)
    assert _install(plain, "--prefix", str(prefix), "--unit-dir", str(units), env=env).returncode == 0
    assert not unit.exists()  # the plain release runs no service: the first's unit went with it
    back = _install(prefix / "current", "--rollback", "--prefix", str(prefix), "--unit-dir", str(units), env=env)
    assert back.returncode == 0 and unit.read_text() == (prefix / "current/edgecls.service").read_text()
    back = _install(prefix / "current", "--rollback", "--prefix", str(prefix), "--unit-dir", str(units), env=env)
    assert back.returncode == 0 and not unit.exists() and "runs no service" in back.stdout


@pytest.mark.slow  # builds two fresh virtual environments (pip install from the bundles), as runtime_venv does
def test_install_offline_keep_previous_and_roll_back(host_bundle, edgecls_wheel, coral, assets, tmp_path):
    """Two serve bundles for this machine with different artifacts installed one after the other,
    each served as its unit says, then a rollback: the first model is served again, by its own
    unit; a damaged bundle is refused."""
    photos = assets / "images/imagenet-photos"
    first = tmp_path / "b1"
    small = tmp_path / "small"
    small.mkdir()
    shutil.copy(coral / SMALL, small / SMALL)
    built = run_cli("deploy", small / SMALL, "--out", first, "--labels", coral / "imagenet_labels.txt",
                    *[a for p in ("parrot.jpg", "cat.bmp") for a in ("--check-image", photos / p)],
                    *_host(edgecls_wheel), "--service", "serve", "--source", photos)
    assert built.returncode == 0, built.stderr
    second = host_bundle
    assert "serve" in json.loads((second / "bundle.json").read_text())["extras"]  # aiohttp & co. on the device
    prefix, units = tmp_path / "opt", tmp_path / "units"
    ids = [json.loads((b / "bundle.json").read_text())["id"] for b in (first, second)]

    done = _install(first, "--prefix", str(prefix), "--unit-dir", str(units))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ready: every needed check passed" in done.stdout and "2/2 check images" in done.stdout
    assert os.readlink(prefix / "current") == f"releases/{ids[0]}"
    listed = subprocess.run([str(prefix / "current/venv/bin/python"), "-m", "pip", "list", "--format", "json"],
                            capture_output=True, text=True, timeout=120)
    installed = {_project(p["name"]) for p in json.loads(listed.stdout)} - {"pip", "setuptools"}
    bundled = {_project(w["name"]) for w in json.loads((first / "bundle.json").read_text())["wheels"]}
    assert installed == bundled - {"pip", "setuptools"}  # exactly the bundle's wheels

    done = _install(second, "--prefix", str(prefix), "--unit-dir", str(units))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3/3 check images" in done.stdout
    assert os.readlink(prefix / "current") == f"releases/{ids[1]}"
    assert os.readlink(prefix / "previous") == f"releases/{ids[0]}"
    _serve_as_the_unit_says(units / "edgecls.service", prefix, photos, tmp_path, MODEL)

    back = _install(prefix / "current", "--rollback", "--prefix", str(prefix), "--unit-dir", str(units))
    assert back.returncode == 0, back.stderr
    assert os.readlink(prefix / "current") == f"releases/{ids[0]}"
    assert os.readlink(prefix / "previous") == f"releases/{ids[1]}"
    _serve_as_the_unit_says(units / "edgecls.service", prefix, photos, tmp_path, SMALL)

    damaged = _copy(first, tmp_path / "damaged")
    wheel = next((damaged / "wheels").glob("numpy-*.whl"))
    _rewrite(wheel, wheel.read_bytes()[:-10])
    refused = _install(damaged, "--prefix", str(prefix), "--unit-dir", str(units))
    assert refused.returncode != 0 and "the bundle is damaged" in refused.stderr and wheel.name in refused.stderr


def _project(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503's normalised project name


def _serve_as_the_unit_says(unit: Path, prefix: Path, photos: Path, tmp_path: Path, model: str) -> None:
    """The installer's unit (written by the release's own `edgecls serve-unit`) runs `edgecls serve`
    of the current release; its command line, started as written (only the port and the state
    folder moved to this test's), serves `model` from the installed environment."""
    import shlex

    from serve_util import Server

    text = unit.read_text()
    python = f"{prefix}/current/venv/bin/python"
    args = [f"{prefix}/current/artifacts/{model}", str(photos), "--port", "8080", "--target", "laptop-cpu",
            "--state-dir", "/var/lib/edgecls"]
    assert f"ExecStart={shlex.join([python, '-m', 'edgecls.cli', 'serve', *args])}\n" in text
    assert "SuccessExitStatus=143" in text and "User=" in text and f"WorkingDirectory={prefix}\n" in text
    verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr  # systemd's own reading of the unit
    server = Server(*args, "--state-dir", tmp_path / f"state-{model}", "--fps", "5", token=None, python=python,
                    cwd=prefix)
    try:
        server.wait_ready(True, timeout=60)
        status, _, body = server.request("POST", "/classify?k=1", (photos / "parrot.jpg").read_bytes(),
                                         headers={"Content-Type": "image/jpeg"})
        answer = json.loads(body)
        assert status == 200 and answer["top_k"][0][0] == "macaw" and answer["model"]["file"] == model, body
    finally:
        assert server.stop() == 0, "".join(server.log)
