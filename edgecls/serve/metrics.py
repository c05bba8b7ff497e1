"""Prometheus metrics through the standard client library, on a registry of the server's own."""
from __future__ import annotations

from typing import Any, Callable

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


_TEMPERATURE: dict[str, float | None] = {"at": -1e9, "value": None}


def cpu_temperature() -> float | None:
    """CPU temperature in °C from the kernel's thermal zones (Raspberry Pi: cpu-thermal), or None;
    read at most once a second (the live view asks for every frame it shows)."""
    import time

    from ..provenance import temperature_c

    now = time.monotonic()
    if now - _TEMPERATURE["at"] >= 1.0:
        _TEMPERATURE["at"], _TEMPERATURE["value"] = now, temperature_c()[0]
    return _TEMPERATURE["value"]


class Metrics:
    """Every metric of one server; `render()` is the body of GET /metrics."""

    def __init__(self, state: Callable[[], dict[str, Any]]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("edgecls_http_requests", "HTTP requests by route and status code", ["route", "code"],
                                registry=r)
        self.latency = Histogram("edgecls_http_request_seconds", "HTTP request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("edgecls_inference_seconds", "Engine time per job (requests and stream frames)",
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.rejected = Counter("edgecls_rejected_requests", "Requests answered 503: the queue was full", registry=r)
        self.inference_errors = Counter("edgecls_inference_errors", "Engine jobs that failed", registry=r)
        self.updates = Counter("edgecls_model_updates", "Model updates and rollbacks by outcome", ["outcome"], registry=r)
        self.model = Gauge("edgecls_model_info", "The serving model (value 1)", ["name", "version", "sha256", "format"],
                           registry=r)
        self.learned = Counter("edgecls_learn_frames_saved", "Uncertain frames saved to learn from", registry=r)
        r.register(_StateCollector(state))

    def set_model(self, name: str, described: dict[str, Any]) -> None:
        self.model.clear()
        self.model.labels(name, described["version"], described["sha256"], described["format"]).set(1)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _StateCollector:
    """Values read from the server's state at scrape time: stream counters, health, queue, viewers."""

    def __init__(self, state: Callable[[], dict[str, Any]]):
        self._state = state

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self._state()
        frames = CounterMetricFamily("edgecls_stream_frames", "Stream frames by outcome", labels=["state"])
        for key, value in s["frames"].items():
            frames.add_metric([key], value)
        yield frames
        gauges = {"edgecls_stream_fps": ("Frames classified per second over the last seconds", s["fps"]),
                  "edgecls_stream_latency_p50_seconds": ("Capture-to-result latency, median of recent frames",
                                                         s["latency_p50_s"]),
                  "edgecls_ready": ("1 when ready to serve (model loaded, engine healthy, source delivering)", s["ready"]),
                  "edgecls_live": ("1 when the engine thread is running and not hung", s["live"]),
                  "edgecls_queue_depth": ("Engine jobs waiting", s["queue_depth"]),
                  "edgecls_requests_in_progress": ("Requests admitted and not finished", s["in_progress"]),
                  "edgecls_cpu_temperature_celsius": ("CPU temperature", s["cpu_temperature"])}
        for name, (text, value) in gauges.items():
            if value is not None:
                yield GaugeMetricFamily(name, text, value=float(value))
        viewers = GaugeMetricFamily("edgecls_viewers", "Live-view viewers by transport", labels=["transport"])
        for transport, count in s["viewers"].items():
            viewers.add_metric([transport], count)
        yield viewers
