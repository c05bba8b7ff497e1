"""Device provenance in benchmark reports: what `edgecls bench` records about the device it ran on
(board, CPU class, engines, temperature and throttling before and after), and the sections that
`edgecls report compare` adds: the two devices side by side, and each artifact against the target
profiles' published reference latencies. A run the firmware slowed down is flagged, never hidden.
"""
from __future__ import annotations

from typing import Any

WARN = "⚠"


def record(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The `device` section of a bench report, from thermal states taken around the timing."""
    from .provenance import device_provenance, throttled_during

    return {**device_provenance(), "thermal_before": before, "thermal_after": after,
            "throttled": throttled_during(before, after)}


def on_target(report: dict[str, Any]) -> bool:
    """Whether the report was measured on the board its target profile describes (device tree name)."""
    target, device = report.get("target"), report.get("device") or {}
    board = ((target or {}).get("device") or {}).get("board") if isinstance(target, dict) else None
    return bool(board and (device.get("model") or "").startswith(board))


def _temperature(device: dict[str, Any]) -> str:
    a, b = ((device.get(k) or {}).get("temperature_c") for k in ("thermal_before", "thermal_after"))
    return f"{a:.1f} → {b:.1f} °C" if a is not None and b is not None else "not reported"


def _clock(device: dict[str, Any]) -> str:
    states = [(device.get(k) or {}).get("cpu_mhz") for k in ("thermal_before", "thermal_after")]
    if not all(states):
        return "not reported"
    return " → ".join(f"{s['current']:.0f}/{s['max']:.0f} MHz" for s in states)


def throttle_text(device: dict[str, Any] | None) -> str:
    if not device:
        return "not recorded (a report from before device provenance)"
    if device.get("throttled"):
        return f"{WARN} throttled: {device['throttled']}; its latencies are slower than the device can do"
    flags = (device.get("thermal_before") or {}).get("throttled")
    return "none reported" if flags is not None else "no firmware flags on this machine"


def provenance_note(report: dict[str, Any]) -> str:
    """One sentence on the device for a report's provenance paragraph ('' for older reports)."""
    device = report.get("device")
    if not device:
        return ""
    return (f" Device: {device.get('model') or 'board not reported'}; temperature: {_temperature(device)}; "
            f"throttling: {throttle_text(device)}.")


def _engines(report: dict[str, Any]) -> str:
    found = (report.get("device") or {}).get("engines")
    if found:
        return "; ".join(v for v in found.values() if v) or "none"
    return ", ".join(sorted({r.get("engine_version", "?") for r in report["results"]}))


def _devices(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    def cpu(report):
        host = report["host"]
        return f"{host.get('cpu', '?')} ({host.get('cpu_class', '?')}, {host.get('cores', '?')} cores, {host.get('machine', '?')})"

    rows = [("board", lambda r: (r.get("device") or {}).get("model") or "not reported"), ("CPU", cpu),
            ("engines", _engines), ("temperature before → after", lambda r: _temperature(r.get("device") or {})),
            ("CPU clock before → after (current/max)", lambda r: _clock(r.get("device") or {})),
            ("throttling", lambda r: throttle_text(r.get("device")))]
    lines = ["", "## Where each run was measured", "", "| | A | B |", "|---|---|---|"]
    lines += [f"| {label} | {get(a)} | {get(b)} |" for label, get in rows]
    for name, report in (("A", a), ("B", b)):
        if (report.get("device") or {}).get("emulated"):
            lines += ["", f"{WARN} Run {name} ran under an emulator (qemu-user): its timings say nothing about the device."]
        if (report.get("device") or {}).get("throttled"):
            lines += ["", f"{WARN} Run {name} throttled ({report['device']['throttled']}): its latencies are not the "
                      "device's; cool the device (or fix its power supply) and measure again."]
    return lines


def _references(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(target name, reference) pairs the report carries, else those of the target profile it names."""
    target = report.get("target")
    if not isinstance(target, dict) or not target.get("name"):
        return []
    refs = target.get("references")
    if refs is None:
        from .errors import EdgeclsError
        from .targets import get_target

        try:
            refs = get_target(target["name"]).references
        except EdgeclsError:
            refs = []
    return [(target["name"], r) for r in refs]


def _reference_rows(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    refs = {(name, r["artifact"], r["model"]): (name, r) for report in (a, b) for name, r in _references(report)}
    rows_a, rows_b = ({r["name"]: r for r in report["results"]} for report in (a, b))
    lines = []
    for artifact in sorted(set(rows_a) | set(rows_b)):
        result = rows_b.get(artifact) or rows_a[artifact]
        kind = f"{result.get('format')}:{result.get('quantization')}"
        for target, ref in refs.values():
            if ref["artifact"] != kind:
                continue
            backbone = result.get("backbone")
            if backbone and ref.get("backbone") and backbone != ref["backbone"]:
                continue
            same = "" if backbone else " (model not recorded: compare with care)"
            cells = []
            for rows in (rows_a, rows_b):
                p50 = (rows.get(artifact) or {}).get("latency_ms", {}).get("p50")
                cells.append(f"{p50:.1f} ({p50 / ref['latency_ms']:.2f}x)" if p50 else "-")
            lines.append(f"| {artifact}{same} | {kind} | {cells[0]} | {cells[1]} | {target}: {ref['model']} "
                         f"{ref['latency_ms']} ms | {ref['source']} |")
    return lines


def compare_sections(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The Markdown lines `report compare` adds after its ratio table."""
    lines = _devices(a, b)
    rows = _reference_rows(a, b)
    lines += ["", "## Against published reference latencies (published figures, not measurements)", ""]
    if rows:
        lines += ["| artifact | kind | A p50 ms (÷ reference) | B p50 ms (÷ reference) | reference | source |",
                  "|---|---|---|---|---|---|", *rows]
    else:
        lines.append("No published reference applies: neither report names a target profile with a reference for "
                     "these artifacts' kinds (run `edgecls bench --target NAME`).")
    return lines
