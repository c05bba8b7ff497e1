"""Camera-stream inference: a pipelined, bounded, fault-tolerant loop over the light runtime.

Stages run in their own threads and overlap: capture -> preprocess -> infer -> sinks. OpenCV,
numpy and the engines release the GIL in their heavy calls, so throughput approaches
1 / (slowest stage) rather than 1 / (sum of stages).

Live sources (cameras, URLs, GStreamer pipelines, Picamera2) never make inference work on a
stale frame: OpenCV's driver buffer is shrunk to one frame where the backend allows it, and the
capture thread keeps reading as fast as the camera delivers, leaving only the newest frame in a
one-slot mailbox; frames replaced there unprocessed are counted as dropped. Files and image
folders are not live: by default every frame is processed, with back-pressure instead of drops.

Modules, by job: `sources` (what frames come from, and the Frame), `sinks` (where results go),
`pipeline` (the threads, statistics and stopping). Their public names are importable from
`edgecls.stream` itself.
"""
from __future__ import annotations

from .pipeline import LatestFrame, Sink, Stream, StreamOptions, StreamStats, install_signal_handlers
from .sinks import JsonLinesSink, VideoSink, WindowSink
from .sources import END, FolderSource, Frame, OpenCVSource, Picamera2Source, Source, SourceError, open_source

__all__ = ["END", "FolderSource", "Frame", "JsonLinesSink", "LatestFrame", "OpenCVSource", "Picamera2Source", "Sink",
           "Source", "SourceError", "Stream", "StreamOptions", "StreamStats", "VideoSink", "WindowSink",
           "install_signal_handlers", "open_source"]
