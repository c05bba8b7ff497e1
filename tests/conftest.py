"""Shared fixtures: real assets from ../shared (or $EDGECLS_ASSETS) and one trained flowers model."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent


def assets_dir() -> Path | None:
    env = os.environ.get("EDGECLS_ASSETS")
    for candidate in ([Path(env)] if env else []) + [ROOT.parent / "shared"]:
        if candidate.is_dir() and (candidate / "README.md").exists():
            return candidate
    return None


# A test that uses one of these fixtures trains a full-size model (MobileNetV2 at 224 px), builds
# a fresh virtual environment or exports a whole matrix: it is marked slow (left out of `make
# test-fast`; `make test`, what CI runs, runs it).
SLOW_FIXTURES = {"flowers_model", "flowers_exports", "runtime_venv", "members", "imagenet"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def once_per_run(tmp_path_factory, name: str, build, save, load):
    """A session fixture's value made once for the whole run: `make test` runs two pytest-xdist
    workers (`--dist loadfile`: each file whole in one worker, so module fixtures are built
    once), and the first worker to need it builds it under a lock in the run's shared temporary
    folder while the other waits, then reads it back (pytest-xdist's documented pattern)."""
    import fcntl
    import json

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent / name
    shared.mkdir(exist_ok=True)
    with open(shared / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        record = shared / "value.json"
        if record.exists():
            return load(json.loads(record.read_text()))
        value = build(shared / "made")
        record.write_text(json.dumps(save(value)))
        return value


def pytest_configure(config):
    """No assets, no run: most tests need the real photos and models, and skipping them would
    turn a broken checkout into a green suite. Each pytest-xdist worker decodes into an image
    cache of its own (two workers building one cache would wait on each other's lock)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and "EDGECLS_CACHE" not in os.environ:
        import tempfile

        os.environ["EDGECLS_CACHE"] = config._edgecls_worker_cache = tempfile.mkdtemp(prefix=f"edgecls-cache-{worker}-")


def pytest_unconfigure(config):
    made = getattr(config, "_edgecls_worker_cache", None)
    if made:
        import shutil

        shutil.rmtree(made, ignore_errors=True)
    if assets_dir() is None:
        where = os.environ.get("EDGECLS_ASSETS") or str(ROOT.parent / "shared")
        raise pytest.UsageError(f"edgecls test assets not found at {where}: set EDGECLS_ASSETS to the shared assets "
                                "folder (data/flowers-small, models/, images/) or put it beside the checkout as ../shared")


@pytest.fixture(scope="session")
def assets() -> Path:
    return assets_dir()


@pytest.fixture(scope="session")
def flowers(assets) -> Path:
    return assets / "data" / "flowers-small"


@pytest.fixture(scope="session")
def mobilenet_weights(assets) -> Path:
    return assets / "models" / "keras" / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"


@pytest.fixture(scope="session")
def coral(assets) -> Path:
    return assets / "models" / "coral"


# The model the export and int8 bounds were measured on: gradient head, then fine-tuning.
FLOWERS_CONFIG = dict(backbone="mobilenet_v2", epochs=8, fine_tune_epochs=5, batch_size=32, seed=0, feature_head=False)


@pytest.fixture(scope="session")
def flowers_model(tmp_path_factory, flowers, mobilenet_weights):
    """MobileNetV2 at 224 from the shared ImageNet weights, trained once per test session."""
    from dataclasses import asdict

    from edgecls.train import TrainConfig, TrainResult, train

    def build(out: Path):
        return train(flowers, out, TrainConfig(weights=str(mobilenet_weights), **FLOWERS_CONFIG))

    def save(result) -> dict:
        return {**asdict(result), "model_path": str(result.model_path), "out_dir": str(result.out_dir),
                "skipped": [[str(p), why] for p, why in result.skipped]}

    def load(d: dict):
        return TrainResult(**{**d, "model_path": Path(d["model_path"]), "out_dir": Path(d["out_dir"]),
                              "skipped": [(Path(p), why) for p, why in d["skipped"]]})

    return once_per_run(tmp_path_factory, "flowers_imagenet", build, save, load)


@pytest.fixture(scope="session")
def flowers_exports(flowers_model, tmp_path_factory):
    """Every (format, mode) of the registry for the flowers model, exported once without a gate
    (so the tests judge each artifact) with the default, portable int8 scheme."""
    from dataclasses import asdict

    from edgecls.export.pipeline import ArtifactReport, export_model

    def build(_out: Path):
        reports = export_model(flowers_model.model_path, "all", "all", out_dir=flowers_model.out_dir / "matrix",
                               max_accuracy_drop=100.0)
        return {r.key: r for r in reports}

    return once_per_run(tmp_path_factory, "flowers_exports", build,
                        lambda reports: {k: asdict(r) for k, r in reports.items()},
                        lambda d: {k: ArtifactReport(**r) for k, r in d.items()})


def run_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real `edgecls` command line in a subprocess, its output to pipes as in CI: no
    terminal and no COLUMNS (whatever the shell running the suite has), so a message's lines
    do not depend on the terminal's width or the checkout's path."""
    base = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run([sys.executable, "-m", "edgecls.cli", *map(str, args)], capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=timeout, cwd=ROOT)
