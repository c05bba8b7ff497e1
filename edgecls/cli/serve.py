"""`edgecls serve` and `edgecls serve-unit`: the model server (edgecls.serve) and its systemd unit;
the server and its libraries (aiohttp, Prometheus, Pillow) are imported only when a command runs."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from .. import checks
from ..serve.config import DEFAULT_STATE_DIR
from .common import command
from .options import Labels, Threads, TopK


MODEL_SUFFIXES = (".tflite", ".onnx", ".xml")


# Options whose help runs over a line, named here so that `serve`'s signature stays one line each.
HeaderTimeout = Annotated[float, typer.Option(help="Seconds a connection may take to send a request head (from "
                                              "connecting or its last answer; idle keep-alive connections close then).")]
MaxConnections = Annotated[int, typer.Option(help="Open connections in all (0: what the open-file limit leaves, at "
                                             "most 1024); when full, the longest idle one is closed.")]
MaxConnectionsPerClient = Annotated[int, typer.Option(help="Open connections from one address.")]
Collect = Annotated[Optional[Path], typer.Option(help="Collect mode: the page saves frames (full resolution) into "
                                                 "COLLECT/<class>/, and the label page moves kept frames there.")]
Fps = Annotated[Optional[float], typer.Option(help="Play a video-file or image-folder source at this frame rate "
                                              "(default: a video at its own rate, a folder at 10; 0: as fast as possible).")]
Resume = Annotated[bool, typer.Option("--resume/--no-resume", help="After a restart, serve the last accepted update "
                                      "(while ARTIFACT is the same file as when it was accepted).")]

MinAgreement = Annotated[float, typer.Option(help="A new model with the same classes must agree this often with the "
                                             "current one on the check pictures.")]


def serve(
    artifact: Optional[Path] = typer.Argument(None, help="A .tflite, .onnx or OpenVINO .xml model (none with --collect: "
                                              "collect photos before any model exists)."),
    source: Optional[str] = typer.Argument(None, help="Optional stream for the live view: camera index, video file, "
                                           "URL, GStreamer pipeline, picamera2[:N] or image folder."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; beyond loopback a token is required."),
    port: int = typer.Option(8080, help="TCP port (0: any free port)."),
    name: str = typer.Option("", help="The model's name in /v2/models/NAME (default: the artifact's stem)."),
    token: Optional[str] = typer.Option(None, help="Access token (prefer --token-file or $EDGECLS_TOKEN: a command "
                                        "line is visible to every user of the device)."),
    token_file: Optional[Path] = typer.Option(None, help="File holding the access token."),
    target: Optional[str] = typer.Option(None, help="Engine options from a target profile (e.g. raspberrypi4)."),
    threads: Threads = None,
    labels: Labels = None,
    top_k: TopK = 5,
    fps: Fps = None,
    queue_size: int = typer.Option(16, help="Requests admitted at once; more are answered 503 with Retry-After."),
    decode_threads: int = typer.Option(2, help="Threads decoding request images."),
    max_upload_mb: float = typer.Option(20.0, help="Largest image or inference request body."),
    max_model_mb: float = typer.Option(256.0, help="Largest model upload."),
    max_pixels: int = typer.Option(25_000_000, help="Largest picture decoded (width x height)."),
    read_timeout: float = typer.Option(15.0, help="Seconds a client may take to send a body."),
    header_timeout: HeaderTimeout = 10.0,
    max_connections: MaxConnections = 0,
    max_connections_per_client: MaxConnectionsPerClient = 64,
    view_fps: float = typer.Option(10.0, help="Most frames per second sent to live viewers (each shown frame is encoded once)."),
    view_width: int = typer.Option(640, help="Live-view frames wider than this are scaled down."),
    view_quality: int = typer.Option(80, help="JPEG quality of live-view frames."),
    state_dir: Path = typer.Option(DEFAULT_STATE_DIR, help="Where accepted model updates are kept."),
    resume: Resume = True,
    watch: Optional[Path] = typer.Option(None, help="Folder to watch for new models (artifact + manifest)."),
    check_images: Optional[Path] = typer.Option(None, help="Pictures every new model is checked on (with recent frames)."),
    min_agreement: MinAgreement = 0.5,
    stale_after: float = typer.Option(5.0, help="Not ready when the source gave no frame for this many seconds."),
    learn: Optional[Path] = typer.Option(None, help="Keep uncertain frames here, as an `edgecls train` image folder."),
    learn_margin: float = typer.Option(0.15, help="Uncertain: top-1 minus top-2 probability below this."),
    learn_entropy: float = typer.Option(0.0, help="Uncertain: normalised entropy above this (0: off)."),
    learn_per_minute: int = typer.Option(6, help="Most frames kept per minute."),
    learn_max_mb: float = typer.Option(500.0, help="Disk cap for kept frames; the oldest go first."),
    learn_quality: int = typer.Option(90, help="JPEG quality of kept frames."),
    collect: Collect = None,
    collect_max_mb: float = typer.Option(2000.0, help="Disk cap of the collection (full: new photos are refused)."),
    collect_quality: int = typer.Option(95, help="JPEG quality of collected photos."),
    shutdown_timeout: float = typer.Option(30.0, help="Seconds SIGTERM waits for requests in progress."),
):
    """Serve a model over HTTP (KServe v2 + /classify), with a live view, metrics, health and model updates."""
    from ..serve.config import CollectOptions, LearnOptions, Limits, ServeConfig, check_config, read_token

    checks.threads("threads", threads)
    artifact, source = _positionals(artifact, source, collect)
    limits = Limits(max_upload_mb, max_model_mb, max_pixels, read_timeout, queue_size, decode_threads, header_timeout,
                    max_connections, max_connections_per_client)
    learning = LearnOptions(learn, learn_margin, learn_entropy, learn_per_minute, learn_max_mb, learn_quality)
    cfg = ServeConfig(artifact, source, host, port, name, read_token(token, token_file), labels=labels, top_k=top_k,
                      fps=fps, view_fps=view_fps, view_width=view_width, view_quality=view_quality,
                      state_dir=state_dir, watch=watch, check_images=check_images, min_agreement=min_agreement,
                      stale_after=stale_after, limits=limits, learn=learning, resume=resume,
                      collect=CollectOptions(collect, collect_max_mb, collect_quality))
    check_config(cfg)
    _run(cfg, target, threads, shutdown_timeout)


def _positionals(artifact: Optional[Path], source: Optional[str], collect: Optional[Path]) -> tuple:
    """`serve --collect DIR SOURCE` has no model: its one positional is the source, not a model file."""
    if collect is not None and source is None and artifact is not None and \
            artifact.suffix.lower() not in MODEL_SUFFIXES:
        return None, str(artifact)
    return artifact, source


def _run(cfg, target: Optional[str], threads: Optional[int], shutdown_timeout: float) -> None:
    from importlib.util import find_spec

    from ..errors import missing_extra
    from ..targets import engine_options_for

    for module, package in (("aiohttp", "aiohttp"), ("prometheus_client", "prometheus-client"), ("PIL", "pillow")):
        if find_spec(module) is None:
            raise missing_extra(package, "serve")
    from ..serve.server import run

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    cfg.engine_options, notes = engine_options_for(cfg.artifact, target, threads) if cfg.artifact else ({}, [])
    for note in notes:
        log(f"note: {note}")
    what = f"{cfg.artifact.name} as {cfg.name!r}" if cfg.artifact else f"no model, collecting into {cfg.collect.folder}"
    run(cfg, log, lambda url: log(f"serving {what} at {url} "
                                  f"({'token required' if cfg.token else 'no token: loopback only'})"),
        shutdown_timeout)


def serve_unit(
    ctx: typer.Context,
    out: Path = typer.Option(Path("edgecls.service"), help="Where to write the unit file."),
    user: Optional[str] = typer.Option(None, help="User the service runs as (default: the current user, or the one "
                                       "behind sudo; root only when named)."),
    description: str = typer.Option("edgecls model server", help="The unit's description."),
    run: str = typer.Option("serve", "--command", help="The edgecls command the unit runs: serve, or stream (what "
                            "the installer of an `edgecls deploy` bundle writes for --service stream)."),
    python: Optional[str] = typer.Option(None, help="The Python that runs edgecls (default: this one; the bundle "
                                         "installer gives PREFIX/current/venv/bin/python)."),
):
    """Write a systemd unit that runs `edgecls serve ARGS...` (or `edgecls stream ARGS...` with --command
    stream) and restarts it on failure.

    Example: edgecls serve-unit --out edgecls.service -- model.tflite picamera2 --host 0.0.0.0 --token-file /etc/edgecls/token
    """
    from ..errors import OptionError
    from ..serve.unit import SERVICES, write_unit

    checks.one_of("command", run, SERVICES)
    args: List[str] = list(ctx.args)
    if not args:
        raise OptionError(f"give the {run} arguments after --, e.g. edgecls serve-unit -- model.tflite 0")
    path = write_unit(args, out, user, description, validate=lambda a: _validate_args(run, a), kind=run,
                      python=python, warn=lambda message: print(f"warning: {message}", file=sys.stderr))
    print(f"wrote {path}\ninstall: sudo cp {path} /etc/systemd/system/ && sudo systemctl daemon-reload && "
          f"sudo systemctl enable --now {path.stem}\nlogs:    journalctl -u {path.stem} -f")


def _validate_args(run: str, args: list[str]) -> dict:
    """Parse the arguments with the command the unit runs, so a unit never carries a typo; returns
    what they parsed to (for the unit's own checks: token, paths)."""
    import click

    from ..errors import OptionError
    from .stream import stream

    app = typer.Typer(add_completion=False)
    app.command()(serve if run == "serve" else stream)
    try:
        ctx = typer.main.get_command(app).make_context(f"edgecls {run}", list(args), resilient_parsing=False)
        paths = {p.name for p in ctx.command.params if isinstance(p.type, click.Path)}  # given as text here
        return {k: Path(v) if k in paths and isinstance(v, str) else v for k, v in ctx.params.items()}
    except click.exceptions.Exit:
        return {}
    except click.ClickException as exc:
        raise OptionError(f"the {run} arguments do not parse: {exc.format_message()}") from None


def register(app: typer.Typer) -> None:
    """`edgecls serve` and `edgecls serve-unit` (which passes what follows `--` to serve)."""
    command(app, serve)
    command(app, serve_unit, "serve-unit",
            context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
