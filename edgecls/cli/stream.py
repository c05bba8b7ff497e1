"""`edgecls stream`: classify a camera or video stream, pipelined, with live statistics."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import checks
from .common import command, err, escape
from .options import Activation, Artifact, Interpolation, Labels, Normalization, Resize, Threads, TopK
from .plain_predict import check_preprocessing_options


def _check(top_k: int, max_frames: int, fps: float, retries: int, retry_interval: float, stats_interval: float,
           threads: Optional[int], activation: Optional[str]) -> None:
    from ..runtime import check_activation

    checks.threads("threads", threads)
    checks.at_least("top_k", top_k, 1)
    for name, value in (("max_frames", max_frames), ("fps", fps), ("retries", retries),
                        ("retry_interval", retry_interval), ("stats_interval", stats_interval)):
        checks.at_least(name, value, 0)
    check_activation(activation)


def _sinks(src, json_lines: bool, save: Optional[Path], show: bool, fps: float) -> list:
    from ..stream import JsonLinesSink, VideoSink, WindowSink

    sinks = []
    if save:  # before the JSON lines: when stdout's reader leaves (`| head`), the video is still closed whole
        sinks.append(VideoSink(save, getattr(src, "fps", 0.0) or fps or 15.0))
    if json_lines:
        sinks.append(JsonLinesSink(sys.stdout))
    if show:
        sinks.append(WindowSink())
    return sinks


def stream(
    artifact: Artifact,
    source: Annotated[str, typer.Argument(help="Camera index, video file, RTSP/HTTP URL, GStreamer pipeline, "
                                          "picamera2[:N] or image folder.")],
    labels: Labels = None,
    normalization: Normalization = None,
    resize: Resize = None,
    interpolation: Interpolation = None,
    target: Annotated[Optional[str], typer.Option(help="Engine options from a target profile (threads, XNNPACK, "
                                                  "delegate, OpenVINO hint).")] = None,
    threads: Threads = None,
    top_k: TopK = 3,
    max_frames: Annotated[int, typer.Option(help="Stop after this many frames (0: until the source ends).")] = 0,
    drop: Annotated[Optional[bool], typer.Option("--drop/--no-drop", help="Keep only the newest frame (default: "
                                                 "on for live sources).")] = None,
    fps: Annotated[float, typer.Option(help="Play an image folder at this frame rate (0: as fast as possible).")]
    = 0.0,
    save: Annotated[Optional[Path], typer.Option(help="Write an annotated video here (.mp4 or .avi).")] = None,
    show: Annotated[bool, typer.Option("--show", help="Show an annotated window (needs OpenCV with GUI).")] = False,
    json_lines: Annotated[bool, typer.Option("--json/--no-json", help="JSON lines on stdout.")] = True,
    retries: Annotated[int, typer.Option(help="Reconnection attempts when a live source fails.")] = 5,
    retry_interval: Annotated[float, typer.Option(help="First reconnection wait in seconds (doubles each time).")]
    = 0.5,
    stats_interval: Annotated[float, typer.Option(help="Seconds between statistics lines on stderr (0: off).")]
    = 5.0,
    activation: Activation = None,
):
    """Classify a camera or video stream, pipelined, with live statistics."""
    _check(top_k, max_frames, fps, retries, retry_interval, stats_interval, threads, activation)
    check_preprocessing_options(resize, interpolation)
    from ..outputs import refuse_overlaps

    refuse_overlaps({"model": artifact, "source": source}, files={"--save": save})
    from ..runtime import Classifier
    from ..stream import Stream, StreamOptions, install_signal_handlers, open_source
    from ..targets import engine_options_for

    # The same call as `bench --target`: both run an artifact with the same engine options.
    options, notes = engine_options_for(artifact, target, threads)
    for note in notes:
        err.print(f"note: {note}", markup=False, highlight=False)
    clf = Classifier.from_artifact(artifact, labels=labels, normalization=normalization, activation=activation,
                                   resize=resize, interpolation=interpolation, **options)
    from ..console import redact

    src = open_source(source, fps=fps)
    runner = Stream(clf, src, _sinks(src, json_lines, save, show, fps),
                    StreamOptions(top_k=top_k, max_frames=max_frames, drop_frames=drop, retries=retries,
                                  retry_interval=retry_interval, stats_interval=stats_interval),
                    log=lambda msg: err.print(redact(msg), highlight=False, markup=False))
    install_signal_handlers(runner)
    err.print(f"streaming {src.description} through {artifact.name} ({clf.engine.version})", markup=False)
    summary = runner.run()
    err.print("summary " + json.dumps(summary), markup=False, highlight=False)
    if runner.error:
        err.print(f"[bold red]error:[/] {escape(redact(runner.error))}", highlight=False)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    command(app, stream)
