"""`edgecls doctor` on this host: it passes on a good artifact, and each failure it detects (missing
engine, wrong checksum, wrong answer, missing delegate, no camera, unwritable cache) fails it with a
message that says what to do."""
from __future__ import annotations

import json
import shutil
import textwrap

import pytest

from tests.conftest import run_cli

PHOTOS = ("parrot.jpg", "grace_hopper.bmp", "cat.bmp")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, coral, assets):
    """The Coral MobileNetV2 with a manifest and three check images, as `edgecls deploy --labels` stages it."""
    from edgecls.deploy.artifacts import stage

    dest = tmp_path_factory.mktemp("staged")
    stage(coral / "mobilenet_v2_1.0_224_quant.tflite", dest, coral / "imagenet_labels.txt",
          [assets / "images/imagenet-photos" / p for p in PHOTOS])
    return dest / "mobilenet_v2_1.0_224_quant.tflite"


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """The doctor keeps its last report in the cache: a test's own, not the user's."""
    monkeypatch.setenv("EDGECLS_CACHE", str(tmp_path / "cache"))


def copy_artifact(artifact, folder):
    shutil.copytree(artifact.parent, folder)
    return folder / artifact.name


def findings(result) -> dict[tuple[str, str], dict]:
    doc = json.loads(result.stdout)
    return {(f["section"], f["name"]): f for f in doc["findings"]}


def failed(result) -> list[dict]:
    return [f for f in json.loads(result.stdout)["findings"] if f["status"] == "fail"]


def test_passes_on_a_good_artifact(artifact):
    result = run_cli("doctor", artifact, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    found = findings(result)
    assert json.loads(result.stdout)["ok"] is True
    for name in ("checksum", "opens", "xnnpack", "answers"):
        assert found[(artifact.name, name)]["status"] == "ok", found[(artifact.name, name)]
    assert "3/3 check images answered as at export" in found[(artifact.name, "answers")]["detail"]
    sweep = found[(artifact.name, "threads")]["data"]
    assert sweep["fastest"] in (int(k) for k in sweep["p50_ms"]) and "1" in sweep["p50_ms"]
    assert found[("engines", "litert")]["status"] == "ok" and "ai-edge-litert" in found[("engines", "litert")]["detail"]
    assert {"python", "os", "cpu"} <= {name for section, name in found if section == "system"}


def test_table_says_what_to_do(artifact, tmp_path):
    broken = copy_artifact(artifact, tmp_path / "a")
    data = broken.read_bytes()
    broken.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    result = run_cli("doctor", broken, "--no-sweep")
    assert result.returncode == 1
    assert "checksum" in result.stdout and "not ready: 1 needed check failed" in result.stdout
    assert "what to do: copy the bundle again" in result.stderr


def test_wrong_checksum(artifact, tmp_path):
    broken = copy_artifact(artifact, tmp_path / "a")
    data = bytearray(broken.read_bytes())
    data[len(data) // 2] ^= 0xFF
    broken.write_bytes(bytes(data))
    result = run_cli("doctor", broken, "--json", "--no-sweep")
    assert result.returncode == 1
    [bad] = failed(result)
    assert bad["name"] == "checksum" and "does not match its manifest's checksum" in bad["detail"]
    assert "sha256sum -c SHA256SUMS" in bad["fix"]


def test_wrong_answer(artifact, tmp_path):
    """A check image whose stored answer the artifact does not give (as on a CPU that computes wrongly)."""
    copied = copy_artifact(artifact, tmp_path / "a")
    manifest_path = copied.with_name(copied.name + ".json")
    doc = json.loads(manifest_path.read_text())
    doc["checks"][0]["top1"] = "toucan"
    manifest_path.write_text(json.dumps(doc))
    result = run_cli("doctor", copied, "--json", "--no-sweep")
    assert result.returncode == 1
    [bad] = failed(result)
    assert bad["name"] == "answers" and "answered macaw" in bad["detail"] and "expected toucan" in bad["detail"]
    assert "2/3 check images" in bad["detail"] and "--int8-cpu portable" in bad["fix"]


def test_missing_engine(artifact, tmp_path):
    """LiteRT blocked at import, as on a device where it was never installed."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent("""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in ("ai_edge_litert", "tflite_runtime"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
    """))
    import os

    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    result = run_cli("doctor", artifact, "--json", "--no-sweep", env={"PYTHONPATH": path})
    assert result.returncode == 1
    found = findings(result)
    engine = found[("engines", "litert")]
    assert engine["status"] == "fail" and f"needed by {artifact.name}" in engine["detail"]
    assert "pip install 'edgecls[runtime]'" in engine["fix"]
    assert found[(artifact.name, "opens")]["status"] == "fail"


def test_missing_delegate(coral):
    """An Edge TPU model where libedgetpu is not installed (none is, on this host)."""
    model = coral / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"
    result = run_cli("doctor", model, "--json", "--no-sweep")
    assert result.returncode == 1
    delegate = findings(result)[("delegates", "edgetpu")]
    assert delegate["status"] == "fail" and "libedgetpu.so.1 not found" in delegate["detail"]
    assert f"needed by {model.name}" in delegate["detail"] and "libedgetpu1-std" in delegate["fix"]


def test_no_camera(tmp_path):
    result = run_cli("doctor", "--json", "--no-sweep", "--camera", "/dev/video99")
    assert result.returncode == 1
    [bad] = failed(result)
    assert bad["section"] == "cameras" and "no camera: /dev/video99 does not exist" in bad["detail"]
    assert "ls /dev/video*" in bad["fix"]


def test_no_camera_device_nodes(tmp_path):
    """The camera listing on a machine without any video device, and a named index there."""
    from edgecls.doctor import Request
    from edgecls.doctor.cameras import check

    [present] = check(Request(), dev=tmp_path)
    assert present.status == "warn" and "no camera found" in present.detail and "--camera SOURCE" in present.fix
    present, named = check(Request(camera="0"), dev=tmp_path)
    assert named.status == "fail" and f"{tmp_path}/video0 does not exist" in named.detail


def test_unwritable_cache(artifact, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli("doctor", artifact, "--json", "--no-sweep", env={"EDGECLS_CACHE": str(blocker / "cache")})
    assert result.returncode == 1
    [bad] = failed(result)
    assert bad["name"] == "cache" and f"{blocker / 'cache'} is not writable" in bad["detail"]
    assert "EDGECLS_CACHE" in bad["fix"]


def test_unknown_target_is_a_usage_error():
    result = run_cli("doctor", "--target", "toaster")
    assert result.returncode == 2 and "unknown target 'toaster'" in result.stderr


def test_json_reports_a_bad_request_on_stdout():
    """--json: a machine reading stdout gets a document for a refused request too (exit 2)."""
    result = run_cli("doctor", "--target", "nosuch", "--json", "--no-sweep")
    assert result.returncode == 2 and "unknown target 'nosuch'" in result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and "unknown target 'nosuch'" in doc["error"] and doc["schema"] == "edgecls.doctor/1"


def test_a_folder_is_not_a_model(artifact):
    result = run_cli("doctor", artifact.parent, "--json", "--no-sweep")
    assert result.returncode == 1
    [bad] = failed(result)
    assert bad["name"] == "file" and f"{artifact.parent}: is a folder, expected a model file" in bad["detail"]


def test_an_artifact_without_a_manifest_fails(artifact, tmp_path):
    """Without its manifest neither the checksum nor the answers can be verified: a needed check
    fails (so install.sh does not activate such a release unless --force), and the engine is
    still tried, so the report says whether the model would run."""
    bare = tmp_path / artifact.name
    shutil.copy(artifact, bare)
    result = run_cli("doctor", bare, "--json", "--no-sweep")
    assert result.returncode == 1
    [bad] = failed(result)
    assert bad["name"] == "manifest" and "cannot be verified" in bad["detail"] and "install.sh --force" in bad["fix"]
    assert findings(result)[(bare.name, "opens")]["status"] == "ok"


def test_throttling_flags_decoded():
    from edgecls.provenance import decode_throttled, throttled_during

    flags = decode_throttled(0x50005, "vcgencmd get_throttled")
    assert flags["now"] == ["under-voltage", "throttled"]
    assert flags["since_boot"] == ["under-voltage", "throttled"]
    calm = {"throttled": decode_throttled(0x0)}
    assert throttled_during(calm, calm) is None
    assert throttled_during(calm, {"throttled": decode_throttled(0x40000)}) == "throttled began during the run"
    assert "under-voltage before the run" in throttled_during({"throttled": decode_throttled(0x1)}, calm)
