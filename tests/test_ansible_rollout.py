"""The fleet-manager path (issue 26 item 5): ansible/rollout.yml, run by ansible-core against three
loopback hosts (`ansible_connection=local`). The bundle's real installer refuses a damaged bundle
on the canary, the canary's rescue runs, and the other two hosts are never touched. (A whole
install is `make test`'s slow deploy test; here the rollout's stop logic is what is tested.)"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from serve_util import ROOT

PLAYBOOK = ROOT / "ansible/rollout.yml"


def ansible(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    binary = Path(sys.executable).parent / "ansible-playbook"
    if not binary.exists():
        pytest.fail("ansible-core is needed (pip install -e '.[dev]')")
    env = {**os.environ, "ANSIBLE_HOME": str(tmp_path / "ansible-home"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "atmp"),
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0", "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(binary), *args], capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)


def test_the_playbook_parses():
    result = ansible(Path("/tmp"), "--syntax-check", "-i", "localhost,", str(PLAYBOOK))
    assert result.returncode == 0, result.stdout + result.stderr


def damaged_bundle(tmp_path: Path) -> Path:
    """A bundle for this machine whose artifact does not match SHA256SUMS (copied badly)."""
    root = tmp_path / "build/edgecls-bundle-test"
    (root / "artifacts").mkdir(parents=True)
    shutil.copy2(ROOT / "edgecls/deploy/install.sh", root / "install.sh")
    (root / "install.sh").chmod(0o755)
    (root / "artifacts/model.tflite").write_bytes(b"not the bytes that were bundled")
    (root / "bundle.env").write_text(
        f"BUNDLE_ID=test\nEDGECLS_VERSION=0\nTARGET=laptop-cpu\nMACHINE={platform.machine()}\n"
        f"PYTHON_VERSION={sys.version_info.major}.{sys.version_info.minor}\nREQUIREMENT=edgecls\n"
        "ARTIFACTS=model.tflite\nSERVICE_KIND=\nSERVICE_ARTIFACT=\nSERVICE_ARGS=\nDOCTOR_ARGS=\n")
    import hashlib

    sums = {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in ("install.sh", "bundle.env")}
    sums["artifacts/model.tflite"] = "0" * 64   # what was bundled is not what arrived
    (root / "SHA256SUMS").write_text("".join(f"{digest}  {name}\n" for name, digest in sums.items()))
    bundle = tmp_path / "bundle.tar.gz"
    with tarfile.open(bundle, "w:gz") as tar:
        tar.add(root, arcname=root.name)
    return bundle


def test_a_damaged_bundle_stops_at_the_canary(tmp_path):
    hosts = ["canary", "second", "third"]
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[edgecls]\n" + "".join(
        f"{h} ansible_connection=local edgecls_prefix={tmp_path / h / 'opt'} edgecls_stage={tmp_path / h / 'stage'}\n"
        for h in hosts))
    result = ansible(tmp_path, "-i", str(inventory), str(PLAYBOOK), "-e", f"edgecls_bundle={damaged_bundle(tmp_path)}")
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "the bundle is damaged" in out and "the rollout stopped at canary" in out, out
    assert "Roll this device back" in out
    assert (tmp_path / "canary/stage").is_dir()
    assert not (tmp_path / "second").exists() and not (tmp_path / "third").exists(), "a host after the canary was touched"
    assert not (tmp_path / "canary/opt/current").exists()  # nothing was activated
