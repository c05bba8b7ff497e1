"""Benchmark reports: Markdown, self-contained HTML with plots, and run-to-run comparison.

A report always says which machine measured each figure; under a target profile it shows the
profile's published reference latencies separately and never as measurements.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from .errors import EdgeclsError

COMPARED = [("latency_ms.p50", "p50 ms", True), ("latency_ms.p90", "p90 ms", True), ("latency_ms.p99", "p99 ms", True),
            ("latency_ms.mean", "mean ms", True), ("throughput_ips", "img/s", False), ("size_bytes", "size", True),
            ("peak_rss_mb", "peak RSS MB", True), ("accuracy", "accuracy", False)]


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def load_report(path: str | Path) -> dict[str, Any]:
    """A bench.json, checked to be an edgecls benchmark report with a host and named results."""
    path = Path(path)
    if not path.is_file():
        raise EdgeclsError(f"{path}: benchmark report not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise EdgeclsError(f"{path}: not a JSON benchmark report ({exc})") from None
    except OSError as exc:
        raise EdgeclsError(f"{path}: cannot read the report ({exc.strerror})") from None
    if not isinstance(doc, dict):
        raise EdgeclsError(f"{path}: not an edgecls benchmark report (a JSON {type(doc).__name__}, expected an object)")
    if not str(doc.get("schema", "")).startswith("edgecls.bench/"):
        raise EdgeclsError(f"{path}: not an edgecls benchmark report (schema {doc.get('schema')!r})")
    results, host = doc.get("results"), doc.get("host")
    if not isinstance(host, dict) or not isinstance(results, list) or not all(
            isinstance(r, dict) and isinstance(r.get("name"), str) for r in results):
        raise EdgeclsError(f"{path}: damaged benchmark report: expected 'host' (an object) and 'results' "
                           "(a list of objects with a 'name')")
    return doc


def provenance(report: dict[str, Any]) -> str:
    """One paragraph on where the figures come from."""
    host = {k: report["host"].get(k, "?") for k in ("cpu", "cores", "machine", "os", "python", "edgecls", "date")}
    host["cpu"] = f"{host['cpu']} [{', '.join(report['host'].get('cpu_features', [])) or 'ISA features unknown'}]"
    text = (f"Measured on this host: {host['cpu']} ({host['cores']} cores, {host['machine']}), {host['os']}, "
            f"Python {host['python']}, edgecls {host['edgecls']}, {host['date']}.")
    target = report.get("target")
    from .device_report import on_target, provenance_note

    if isinstance(target, dict) and target.get("name") and on_target(report):
        text += f" Target profile '{target['name']}' supplied the engine options, and this is that device."
    elif isinstance(target, dict) and target.get("name"):
        text += (f" Target profile '{target['name']}' ({target.get('hardware', '?')}) supplied the engine options; "
                 f"these figures are host measurements, not measurements on {target.get('hardware', '?')}.")
    return text + provenance_note(report)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not beaten on both latency (lower) and accuracy (higher)."""
    front = []
    for i, (lat, acc) in enumerate(points):
        if not any((l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc) for j, (l2, a2) in enumerate(points) if j != i):
            front.append(i)
    return front


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Benchmark", "", provenance(report), "",
             "| artifact | engine | threads | batch | size (MB) | init (ms) | first (ms) | p50 (ms) | p90 (ms) | p99 (ms) | mean ± std (ms) | img/s | peak RSS (MB) | accuracy | agreement |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        lat = r["latency_ms"]
        acc = f"{r['accuracy']:.4f}" if r.get("accuracy") is not None else "-"
        agr = f"{r['top1_agreement']:.4f}" if r.get("top1_agreement") is not None else "-"
        lines.append(f"| {r['name']} | {r['engine_version']} | {r['threads'] or 'default'} | {r['batch']} | "
                     f"{r['size_bytes'] / 1e6:.2f} | {r['init_ms']:.0f} | {r['first_inference_ms']:.1f} | {lat['p50']:.2f} | "
                     f"{lat['p90']:.2f} | {lat['p99']:.2f} | {lat['mean']:.2f} ± {lat['std']:.2f} | "
                     f"{r['throughput_ips']:.1f} | {r['peak_rss_mb']:.0f} | {acc} | {agr} |")
    setups = [f"- {r['name']}: {json.dumps(r['engine_options'], sort_keys=True)}"
              for r in report["results"] if r.get("engine_options") is not None]
    if setups:
        lines += ["", "Engine options each artifact ran with (the same as `edgecls stream` applies):", "", *setups]
    target = report.get("target")
    if target:
        lines += ["", f"## Published reference latencies for {target['name']} (not measured here)", ""]
        if target.get("references"):
            lines += ["| model | artifact | latency (ms) | source |", "|---|---|---|---|"]
            lines += [f"| {r['model']} | {r['artifact']} | {r['latency_ms']} | {r['source']} |" for r in target["references"]]
        else:
            lines.append("No published reference latency is recorded for this target.")
    return "\n".join(lines) + "\n"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plots(report: dict[str, Any]) -> dict[str, str]:
    """Latency distribution, accuracy vs p50 (best choices marked), size: base64 PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    names = [r["name"] for r in results]
    out = {}
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.9), 4))
    ax.boxplot([r.get("samples_ms") or [r["latency_ms"]["p50"]] for r in results], showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
    ax.set_ylabel("latency per batch (ms)")
    ax.set_title("Latency distribution (whiskers: 1.5 IQR)")
    ax.grid(axis="y", alpha=0.3)
    out["latency"] = _png(fig)

    with_acc = [r for r in results if r.get("accuracy") is not None]
    if with_acc:
        pts = [(r["latency_ms"]["p50"], r["accuracy"]) for r in with_acc]
        front = set(pareto_front(pts))
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for i, (r, (lat, acc)) in enumerate(zip(with_acc, pts)):
            best = i in front
            ax.scatter(lat, acc, s=70 if best else 35, marker="*" if best else "o",
                       color="tab:red" if best else "tab:blue", zorder=3)
            ax.annotate(r["name"], (lat, acc), textcoords="offset points", xytext=(4, 4 + 10 * (i % 3)), fontsize=8)
        ax.set_xlabel("p50 latency (ms)")
        ax.set_ylabel("accuracy")
        ax.set_title("Accuracy vs latency (red stars: best trade-offs)")
        ax.grid(alpha=0.3)
        out["tradeoff"] = _png(fig)

    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.9), 3.5))
    ax.bar(names, [r["size_bytes"] / 1e6 for r in results], color="tab:green")
    ax.set_ylabel("MB")
    ax.set_title("Artifact size")
    ax.tick_params(axis="x", rotation=30)
    out["size"] = _png(fig)
    return out


def html_page(report: dict[str, Any]) -> str:
    """A self-contained HTML page (inline CSS and images); every name is escaped."""
    esc = html.escape
    rows = []
    for r in report["results"]:
        lat = r["latency_ms"]
        acc = f"{r['accuracy']:.4f}" if r.get("accuracy") is not None else "-"
        rows.append("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in (
            r["name"], r["engine_version"], r["threads"] or "default", r["batch"], f"{r['size_bytes'] / 1e6:.2f}",
            f"{lat['p50']:.2f}", f"{lat['p90']:.2f}", f"{lat['p99']:.2f}", f"{r['throughput_ips']:.1f}",
            f"{r['peak_rss_mb']:.0f}", acc)) + "</tr>")
    titles = {"latency": "Latency distribution", "tradeoff": "Accuracy vs latency", "size": "Artifact size"}
    try:
        figures = plots(report)
    except ImportError:  # a device with the runtime extra only: the page says why it has no plots
        figures = {}
    images = "".join(f'<h2>{titles[k]}</h2><img alt="{titles[k]}" src="data:image/png;base64,{data}">'
                     for k, data in figures.items()) or (
        '<p class="note">No plots: matplotlib is not installed where this report was written (a device with '
        'edgecls[runtime] only). bench.json holds the timings; render it elsewhere with edgecls.report.write_all.</p>')
    target = report.get("target")
    refs = ""
    if target:
        items = "".join(f"<li>{esc(r['model'])} {esc(r['artifact'])}: {esc(str(r['latency_ms']))} ms "
                        f"<small>({esc(r['source'])})</small></li>" for r in target.get("references", []))
        refs = (f"<h2>Published reference latencies for {esc(target['name'])} (not measured here)</h2>"
                f"<ul>{items or '<li>none recorded</li>'}</ul>")
    head = ("<th>artifact</th><th>engine</th><th>threads</th><th>batch</th><th>size MB</th><th>p50 ms</th>"
            "<th>p90 ms</th><th>p99 ms</th><th>img/s</th><th>peak RSS MB</th><th>accuracy</th>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgecls benchmark</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}
.note{{background:#fff6d5;padding:8px;border-left:4px solid #e0b000}}img{{max-width:100%}}</style></head>
<body><h1>edgecls benchmark</h1><p class="note">{esc(provenance(report))}</p>
<table><tr>{head}</tr>{''.join(rows)}</table>{refs}{images}</body></html>
"""


def compare(a: dict[str, Any], b: dict[str, Any]) -> tuple[str, list[str]]:
    """Markdown comparison of run B against run A (ratios B/A) and the list of regressions."""
    def key(r):
        return r["name"]

    rows_a, rows_b = {key(r): r for r in a["results"]}, {key(r): r for r in b["results"]}
    lines = [f"A: {provenance(a)}", "", f"B: {provenance(b)}", "",
             "| artifact | " + " | ".join(label for _, label, _ in COMPARED) + " |",
             "|---|" + "---|" * len(COMPARED)]
    regressions = []
    for name in sorted(set(rows_a) | set(rows_b)):
        if name not in rows_a or name not in rows_b:
            lines.append(f"| {name} | " + ("only in B" if name in rows_b else "only in A") + " |" * len(COMPARED))
            continue
        cells = []
        for field, label, lower_is_better in COMPARED:
            va, vb = _get(rows_a[name], field), _get(rows_b[name], field)
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (va, vb)) or va == 0:
                cells.append("-")
                continue
            ratio = vb / va
            worse = ratio > 1.10 if lower_is_better else ratio < (0.99 if field == "accuracy" else 0.90)
            cells.append(f"{ratio:.2f}x" + (" ⚠" if worse else ""))
            if worse:
                regressions.append(f"{name}: {label} {va:.4g} -> {vb:.4g} ({ratio:.2f}x)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if a["host"].get("cpu_class", "?") != b["host"].get("cpu_class", "?"):
        lines += ["", f"Note: different CPU classes ({a['host'].get('cpu_class', '?')} vs {b['host'].get('cpu_class', '?')}): "
                  "int8 kernels differ between them (VNNI, AVX2, NEON), so int8 accuracy and latency may too."]
    if a["host"].get("cpu") != b["host"].get("cpu"):
        lines += ["", f"Note: different machines ({a['host'].get('cpu')} vs {b['host'].get('cpu')}); ratios mix hardware and software changes."]
    from .device_report import compare_sections

    lines += compare_sections(a, b)
    return "\n".join(lines) + "\n", regressions


def write_all(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    from .files import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "bench.json", "md": out_dir / "bench.md", "html": out_dir / "bench.html"}
    atomic_write_text(paths["json"], json.dumps(report, indent=2) + "\n")
    atomic_write_text(paths["md"], markdown(report))
    atomic_write_text(paths["html"], html_page(report))
    return paths


