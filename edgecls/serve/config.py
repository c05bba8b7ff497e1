"""Options of `edgecls serve`, checked before anything starts."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import checks
from ..errors import OptionError

DEFAULT_STATE_DIR = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "edgecls" / "serve"


@dataclass
class Limits:
    """What one request may cost the device."""

    max_upload_mb: float = 20.0          # an image body
    max_model_mb: float = 256.0          # a model update (artifact + manifest + companions)
    max_pixels: int = 25_000_000         # decoded picture size (25 MP: a 24 MP camera photo fits)
    read_timeout: float = 15.0           # seconds to receive a whole body (a slow client gets 408)
    queue_size: int = 16                 # requests admitted at once (decoding, queued, running); more: 503
    decode_threads: int = 2              # threads that decode and prepare request images
    header_timeout: float = 10.0         # seconds to send a request head (from connecting, or the last answer)
    max_connections: int = 0             # open connections in all (0: derived from the open-file limit)
    max_connections_per_client: int = 64  # open connections from one address

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * (1 << 20))

    @property
    def max_model_bytes(self) -> int:
        return int(self.max_model_mb * (1 << 20))

    @property
    def connections(self) -> int:
        """--max-connections, or the default the open-file limit allows."""
        from .connections import default_max_connections

        return self.max_connections or default_max_connections()


@dataclass
class LearnOptions:
    """Frames to learn from: uncertain stream frames kept as an `edgecls train` image folder."""

    folder: Path | None = None
    margin: float = 0.15                 # top-1 minus top-2 probability below this: uncertain
    entropy: float = 0.0                 # normalised entropy above this: uncertain (0: off)
    per_minute: int = 6
    max_mb: float = 500.0
    quality: int = 90


@dataclass
class CollectOptions:
    """Photos saved from the page (`--collect DIR`): DIR/<class>/, the device's labelled dataset."""

    folder: Path | None = None
    max_mb: float = 2000.0               # a full collection refuses new photos (they carry labels)
    quality: int = 95                    # JPEG quality of saved frames (full camera resolution)


@dataclass
class ServeConfig:
    artifact: Path | None                # None: collect mode without a model (--collect DIR)
    source: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    name: str = ""                       # the model's name in URLs (default: the artifact's stem)
    token: str | None = None
    engine_options: dict[str, Any] = field(default_factory=dict)
    labels: Path | None = None           # a label file, for a model without a manifest
    top_k: int = 5
    fps: float | None = None             # pace a file or folder source (None: its own rate / 10; 0: unpaced)
    view_fps: float = 10.0               # most frames per second encoded for viewers
    view_width: int = 640                # frames wider than this are scaled down for viewers
    view_quality: int = 80
    state_dir: Path = DEFAULT_STATE_DIR
    watch: Path | None = None
    check_images: Path | None = None
    min_agreement: float = 0.5           # a new model must agree this often with the current one
    stale_after: float = 5.0             # no stream result for this long: not ready
    limits: Limits = field(default_factory=Limits)
    learn: LearnOptions = field(default_factory=LearnOptions)
    collect: CollectOptions = field(default_factory=CollectOptions)
    resume: bool = True                  # serve the last accepted update from state_dir after a restart

    def __post_init__(self) -> None:
        self.name = model_name(self.name or (Path(self.artifact).stem if self.artifact else "collect"))

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def model_name(text: str) -> str:
    """A model name safe in a URL path segment."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "model"
    return name[:64]


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(token: str | None, token_file: Path | None) -> str | None:
    """The access token from --token, a token file, or $EDGECLS_TOKEN (in that order)."""
    if token and token_file:
        raise OptionError("give --token or --token-file, not both")
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise OptionError(f"--token-file {token_file}: cannot read it ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise OptionError(f"--token-file {token_file}: not UTF-8 text") from None
        if not token:
            raise OptionError(f"--token-file {token_file}: the file is empty")
    token = token or os.environ.get("EDGECLS_TOKEN") or None
    if token is not None and (len(token) < 16 or not token.isprintable() or " " in token):
        raise OptionError("the token must be at least 16 printable characters without spaces "
                          "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')")
    return token


def check_config(cfg: ServeConfig) -> None:
    """Refuse settings that would expose the device or cannot work, before anything opens (an
    OptionError names the parameter, `queue_size`; the command line shows it as `--queue-size`)."""
    _check_artifact(cfg)
    src = cfg.source
    if src and not (src.isdigit() or "://" in src or "!" in src or src.startswith("picamera2")) and not Path(src).exists():
        # A camera may come and go (the server waits for it); a file or folder named wrongly will not appear.
        raise OptionError(f"{src}: no such file or folder (a source is a camera index, video file, URL, "
                          "GStreamer pipeline, picamera2[:N] or image folder)")
    if not cfg.loopback and not cfg.token:
        raise OptionError(f"--host {cfg.host} reaches beyond this machine: give --token-file (or --token, or "
                          "$EDGECLS_TOKEN); every route but health and the page will require it")
    checks.within("port", cfg.port, 0, 65535)
    lim, learn = cfg.limits, cfg.learn
    for option, value, low in (("max_upload_mb", lim.max_upload_mb, 0.01), ("max_model_mb", lim.max_model_mb, 0.01),
                               ("max_pixels", lim.max_pixels, 1), ("read_timeout", lim.read_timeout, 0.1),
                               ("queue_size", lim.queue_size, 1), ("decode_threads", lim.decode_threads, 1),
                               ("header_timeout", lim.header_timeout, 0.1), ("max_connections", lim.max_connections, 0),
                               ("max_connections_per_client", lim.max_connections_per_client, 1),
                               ("view_fps", cfg.view_fps, 0.1), ("view_width", cfg.view_width, 16),
                               ("stale_after", cfg.stale_after, 0.1), ("top_k", cfg.top_k, 1),
                               ("fps", cfg.fps or 0.0, 0.0), ("learn_per_minute", learn.per_minute, 1),
                               ("learn_max_mb", learn.max_mb, 0.1)):
        checks.at_least(option, value, low)
    checks.at_least("collect_max_mb", cfg.collect.max_mb, 1)
    for option, value in (("view_quality", cfg.view_quality), ("learn_quality", learn.quality),
                          ("collect_quality", cfg.collect.quality)):
        checks.within(option, value, 1, 100)
    for option, value in (("learn_margin", learn.margin), ("learn_entropy", learn.entropy),
                          ("min_agreement", cfg.min_agreement)):
        checks.within(option, value, 0, 1)
    _check_connections(lim)
    if cfg.watch is not None and not cfg.watch.is_dir():
        raise OptionError(f"--watch {cfg.watch}: not a folder")
    if cfg.check_images is not None and not cfg.check_images.is_dir():
        raise OptionError(f"--check-images {cfg.check_images}: not a folder")
    from ..outputs import refuse_overlaps

    # Kept frames must not land among what the server reads: an image-folder source would replay them,
    # the check images and the watched folder would take them for theirs.
    refuse_overlaps({"model": cfg.artifact, "source": src if src and Path(src).exists() else None,
                     "--watch": cfg.watch, "--check-images": cfg.check_images},
                    folders={"--learn": learn.folder, "--collect": cfg.collect.folder})
    if learn.folder and cfg.collect.folder:
        a, b = Path(learn.folder).resolve(), Path(cfg.collect.folder).resolve()
        if a.is_relative_to(b) or b.is_relative_to(a):
            raise OptionError(f"--learn {learn.folder} and --collect {cfg.collect.folder} overlap: kept frames are "
                              "unlabelled, collected photos labelled; give two separate folders")


def _check_artifact(cfg: ServeConfig) -> None:
    """A model file, or none at all in collect mode (then only the page, collecting and labelling)."""
    if cfg.artifact is None:
        if cfg.collect.folder is None:
            raise OptionError("give the model file (ARTIFACT), or --collect DIR to collect photos before any model "
                              "exists")
        if cfg.source is None:
            raise OptionError("--collect without a model needs a SOURCE (the camera to collect from)")
        for option, given in (("--learn", cfg.learn.folder), ("--watch", cfg.watch),
                              ("--check-images", cfg.check_images)):
            if given is not None:
                raise OptionError(f"{option} needs a model: give ARTIFACT, or leave {option} out while collecting")
        return
    if not Path(cfg.artifact).is_file():
        raise OptionError(f"{cfg.artifact}: model file not found")


def _check_connections(lim: Limits) -> None:
    """Connections must stay below the open-file limit, with room for everything else the server opens."""
    from .connections import open_file_limit, reserved_files

    files = open_file_limit()
    room = files - reserved_files(files)
    if room < 1:
        raise OptionError(f"the open-file limit ({files}: ulimit -n, LimitNOFILE=) leaves no room for "
                          f"max_connections beside the {reserved_files(files)} descriptors kept for models, cameras "
                          "and files; raise it", "max_connections")
    if lim.max_connections > room:
        raise OptionError(f"max_connections {lim.max_connections} does not fit under the open-file limit ({files}: "
                          f"ulimit -n, LimitNOFILE=) beside the {reserved_files(files)} descriptors kept for models, "
                          f"cameras and files: give at most {room}, or raise the limit", "max_connections")
