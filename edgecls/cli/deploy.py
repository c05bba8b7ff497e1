"""The `edgecls deploy` command: build an offline bundle and say what it holds and what makes it big."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from .common import command, err, escape, show

MB = 1e6


def deploy(
    artifacts: List[Path] = typer.Argument(..., help="Artifacts to deploy (with their manifests); the first one "
                                           "is the service's."),
    target: str = typer.Option(..., help="Target profile: the device's machine and Python, engine options "
                               "(see `edgecls targets`)."),
    out: Path = typer.Option(..., help="Bundle folder, or a file name ending in .tar.gz (one that exists is "
                             "replaced only when it is a bundle deploy wrote, unchanged)."),
    labels: Optional[Path] = typer.Option(None, help="Label file for an artifact without a manifest: deploy writes "
                                          "one into the bundle."),
    check_image: Optional[List[Path]] = typer.Option(None, "--check-image", help="A photo whose answer on this "
                                                     "machine the device's doctor must reproduce (for artifacts "
                                                     "whose manifest stores no check images); repeatable."),
    service: str = typer.Option("none", help="The systemd service the installer writes: serve, stream or none."),
    source: Optional[str] = typer.Option(None, help="The service's source: camera index, picamera2, URL, folder."),
    port: int = typer.Option(8080, help="Port of the serve service."),
    host: str = typer.Option("127.0.0.1", help="Address the serve service binds (0.0.0.0: every interface; "
                             "beyond loopback it needs --token-file)."),
    token_file: Optional[str] = typer.Option(None, help="Absolute path ON THE DEVICE of the file holding the serve "
                                             "service's access token (not bundled; create it there, mode 600)."),
    python_version: Optional[str] = typer.Option(None, help="The device's Python as X.Y (default: the target's)."),
    platform: Optional[List[str]] = typer.Option(None, "--platform", help="pip platform tag of the device, such as "
                                                 "manylinux_2_36_aarch64 (default: the target's); repeatable."),
    find_links: Optional[Path] = typer.Option(None, help="Take wheels from this folder only (a workstation "
                                              "without network)."),
    edgecls_wheel: Optional[Path] = typer.Option(None, help="A built edgecls wheel, instead of building one "
                                                 "from this checkout."),
):
    """Build an offline bundle for a device: artifacts, the wheels of edgecls and its engine for the device's
    platform and Python, and an installer that needs no network, writes the service and runs the doctor."""
    from ..deploy.bundle import BundleRequest, build_bundle

    kind = None if service == "none" else service
    request = BundleRequest(list(artifacts), target, out, labels, list(check_image or []), kind, source, port,
                            host, token_file, python_version, list(platform or []), find_links, edgecls_wheel)
    with err.status("building the bundle") as status:
        doc = build_bundle(request, progress=lambda message: status.update(escape(message)))
    for artifact in doc["artifacts"]:
        for note in artifact["notes"]:
            err.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    print_summary(doc, out)


def size_rows(doc: dict[str, Any], top: int = 4) -> list[tuple[str, int]]:
    """(component, bytes) of the bundle, largest first: the biggest wheels, the rest, the artifacts."""
    wheels = sorted(doc["wheels"], key=lambda w: -w["bytes"])
    rows = [(f"{w['name']} {w['version']} (wheel)", w["bytes"]) for w in wheels[:top]]
    rest = wheels[top:]
    if rest:
        rows.append((f"{len(rest)} other wheels ({', '.join(w['name'] for w in rest)})", sum(w["bytes"] for w in rest)))
    rows.append((f"{len(doc['artifacts'])} artifact(s) with manifests and check images", doc["sizes"]["artifacts_bytes"]))
    return rows


def print_summary(doc: dict[str, Any], out: Path) -> None:
    """The bundle's contents, its size and what dominates it, and how to install it."""
    from rich.table import Table

    sizes = doc["sizes"]
    total = sizes["bundle_bytes"]
    table = Table(title=f"bundle {doc['id']} for {escape(doc['target'])}: {total / MB:.1f} MB "
                        f"({doc['device']['machine']}, Python {doc['device']['python']})")
    for column in ("component", "MB", "share"):
        table.add_column(column, justify="left" if column == "component" else "right")
    parts = sum(b for _, b in size_rows(doc))
    for name, size in size_rows(doc):
        table.add_row(escape(name), f"{size / MB:.1f}", f"{100 * size / parts:.0f}%")
    show.print(table)
    show.print(f"installed on the device: about {sizes['installed_bytes'] / MB:.0f} MB (unpacked wheels and "
                  "artifacts; the virtual environment adds pip, about 12 MB)", highlight=False)
    service = doc["service"]
    if service["kind"]:
        show.print(f"service: edgecls {service['kind']} {escape(service['artifact'])} "
                      f"{escape(' '.join(service['args']))}", highlight=False)
    show.print(f"written: {escape(str(out))}\non the device: sudo ./install.sh   (see README.txt in the bundle)",
                  highlight=False)


def register(app: typer.Typer) -> None:
    """`edgecls deploy`."""
    command(app, deploy)
