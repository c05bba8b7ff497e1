"""The wheels of a bundle: edgecls itself built from this checkout, and its runtime dependencies for
the device's platform and Python, fetched here with pip's cross-platform download
(`pip download --platform ... --python-version ... --only-binary=:all:`): the device installs
them with `--no-index` and never needs the network."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import EdgeclsError

# Engine -> the edgecls extra that installs it (`edgecls.engines` registry names).
ENGINE_EXTRAS = {"litert": "runtime", "onnxruntime": "onnx", "openvino": "openvino"}


@dataclass(frozen=True)
class Platform:
    """What pip downloads for: platform tags, Python version ("3.11"), implementation and ABIs."""

    tags: tuple[str, ...]
    python: str

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")

    def pip_args(self) -> list[str]:
        args = [a for tag in self.tags for a in ("--platform", tag)]
        return args + ["--python-version", self.python, "--implementation", "cp", "--abi", self.abi,
                       "--abi", "abi3", "--abi", "none", "--only-binary=:all:"]


@dataclass(frozen=True)
class Wheel:
    file: str
    name: str
    version: str
    bytes: int
    installed_bytes: int      # the files it unpacks to on the device

    @classmethod
    def read(cls, path: Path) -> "Wheel":
        name, version = path.name.split("-")[:2]
        try:
            with zipfile.ZipFile(path) as z:
                installed = sum(i.file_size for i in z.infolist())
        except zipfile.BadZipFile:
            raise EdgeclsError(f"{path}: not a wheel (a damaged download?); delete it and run again") from None
        return cls(path.name, name.replace("_", "-").lower(), version, path.stat().st_size, installed)


def checkout_root() -> Path | None:
    """The source checkout edgecls runs from (a folder with its pyproject.toml), or None."""
    root = Path(__file__).resolve().parents[2]
    project = root / "pyproject.toml"
    if project.is_file() and 'name = "edgecls"' in project.read_text(encoding="utf-8", errors="replace"):
        return root
    return None


def _pip(args: Sequence[str], what: str, find_links: Path | None) -> None:
    """Run this Python's pip; a failure becomes one error that names what was being fetched."""
    index = ["--no-index", "--find-links", str(find_links)] if find_links else []
    cmd = [sys.executable, "-m", "pip", *args, *index, "--disable-pip-version-check", "--progress-bar", "off", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("WARNING: Location")]
        raise EdgeclsError(f"{what} failed (pip exit {proc.returncode}): " + " | ".join(lines[-4:]))


# What the wheel is built from (pyproject.toml's packages, package dirs and readme).
PACKAGE_SOURCES = ("pyproject.toml", "README.md", "LICENSE", "edgecls", "models", "targets")


def build_edgecls_wheel(dest: Path, find_links: Path | None = None) -> Path:
    """Build the edgecls wheel from this checkout into `dest`."""
    root = checkout_root()
    if root is None:
        raise EdgeclsError("edgecls deploy builds the edgecls wheel from a source checkout, and this edgecls is an "
                           "installed package: run deploy from a checkout (pip install -e .), or pass --edgecls-wheel")
    with tempfile.TemporaryDirectory(prefix="edgecls-wheel-") as tmp:
        # From a copy of the package's sources: setuptools builds in the source folder's build/,
        # where two builds from one checkout at once (two deploys, a test beside a deploy) collide
        # ("File exists: build/bdist..."), and a checkout's other files (runs/, data) stay out.
        source = Path(tmp) / "source"
        source.mkdir()
        for name in PACKAGE_SOURCES:
            if (root / name).is_dir():
                shutil.copytree(root / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif (root / name).is_file():
                shutil.copy2(root / name, source / name)
        _pip(["wheel", "--no-deps", "--wheel-dir", tmp, str(source)], f"building the edgecls wheel from {root}",
             find_links)
        built = sorted(Path(tmp).glob("edgecls-*.whl"))
        if not built:
            raise EdgeclsError(f"building the edgecls wheel from {root} produced no wheel")
        dest.mkdir(parents=True, exist_ok=True)
        return Path(built[0].replace(dest / built[0].name))


def download(edgecls_wheel: Path, extras: Sequence[str], platform: Platform, dest: Path,
             find_links: Path | None = None) -> list[Wheel]:
    """Fetch the wheels edgecls[extras] needs on the device into `dest` (the edgecls wheel included)."""
    requirement = f"edgecls[{','.join(sorted(extras))}] @ {edgecls_wheel.resolve().as_uri()}"
    dest.mkdir(parents=True, exist_ok=True)
    _pip(["download", "--dest", str(dest), *platform.pip_args(), requirement],
         f"fetching the wheels of edgecls[{','.join(sorted(extras))}] for {', '.join(platform.tags[:1])} "
         f"(and older), Python {platform.python} (a package without a wheel for that platform and Python cannot "
         "be installed offline: choose another --python-version, or drop the artifact that needs it)", find_links)
    wheels = [Wheel.read(p) for p in sorted(dest.glob("*.whl"))]
    foreign = [w.file for w in wheels if not _fits(w.file, platform)]
    if foreign:
        raise EdgeclsError(f"pip returned wheels that do not fit {platform.tags[0]}: {', '.join(foreign)}")
    return wheels


def _fits(filename: str, platform: Platform) -> bool:
    """Whether a wheel's own tags name one of the platform tags (or any platform)."""
    tags = filename[:-4].split("-")[-1].split(".")
    return "any" in tags or any(t in platform.tags for t in tags)
