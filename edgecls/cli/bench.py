"""`edgecls bench` and `edgecls report compare`: measure artifacts, compare two measurements."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..bench import DEFAULT_TIMEOUT_S
from .common import command, err, folder_option, show
from .options import ACTIVATION_HELP, Threads


def bench(
    artifacts: Annotated[List[Path], typer.Argument(help="Artifacts to measure.")],
    target: Annotated[Optional[str], typer.Option(
        help="Engine options and reference latencies from a target profile.")] = None,
    dataset: Annotated[Optional[Path], typer.Option(
        help="Labelled image-folder dataset: adds accuracy and agreement.")] = None,
    threads: Threads = None,
    batch: Annotated[int, typer.Option()] = 1,
    warmup: Annotated[int, typer.Option(help="Minimum warm-up runs.")] = 10,
    warmup_time: Annotated[float, typer.Option(help="Minimum warm-up seconds.")] = 0.5,
    runs: Annotated[int, typer.Option(help="Minimum timed runs.")] = 50,
    min_time: Annotated[float, typer.Option(help="Minimum timed seconds.")] = 2.0,
    rounds: Annotated[int, typer.Option(
        help="Measure the artifacts in turn this many times and pool the timings.")] = 1,
    timeout: Annotated[float, typer.Option(
        help="Seconds one artifact's measurement may take before it is stopped.")] = DEFAULT_TIMEOUT_S,
    activation: Annotated[Optional[str], typer.Option(help=ACTIVATION_HELP + " Used with --dataset.")] = None,
    out: Annotated[Path, typer.Option(help="Folder for bench.json, bench.md and bench.html.")] = Path("runs/bench"),
):
    """Latency percentiles, throughput, size, memory (and accuracy) per artifact; JSON, Markdown, HTML.

    Each artifact runs with exactly the engine options `stream` would give it (recorded in the report)."""
    from ..bench import bench as run_bench, check_options

    options = dict(batch=batch, warmup=warmup, warmup_seconds=warmup_time, min_runs=runs, min_seconds=min_time)
    check_options(rounds=rounds, threads=threads, timeout=timeout, activation=activation, **options)
    folder_option("--out", out)
    from ..report import markdown, write_all

    report = run_bench(artifacts, target=target, dataset=dataset, rounds=rounds, threads=threads,
                       activation=activation, timeout=timeout,
                       on_result=lambda r: err.print(f"{r['name']}: p50 {r['latency_ms']['p50']:.2f} ms "
                                                     f"(engine options {json.dumps(r.get('engine_options', {}))})",
                                                     markup=False, highlight=False),
                       on_note=lambda note: err.print(f"note: {note}", markup=False, highlight=False),
                       **options)
    paths = write_all(report, out)
    show.print(markdown(report), markup=False, soft_wrap=True)
    show.print(f"written: {paths['json']}, {paths['md']}, {paths['html']}", markup=False)


def report_compare(
    before: Annotated[Path, typer.Argument(help="Earlier bench.json (A).")],
    after: Annotated[Path, typer.Argument(help="Later bench.json (B).")],
    fail_on_regression: Annotated[bool, typer.Option(
        help="Exit 1 when anything regressed by more than 10%.")] = False,
):
    """What changed between two benchmark runs, per artifact and figure, as ratios B/A."""
    from ..report import compare, load_report

    text, regressions = compare(load_report(before), load_report(after))
    show.print(text, markup=False, soft_wrap=True)
    if regressions:
        err.print("regressions:\n  " + "\n  ".join(regressions), markup=False)
        if fail_on_regression:
            raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    command(app, bench)
    report_app = typer.Typer(help="Work with benchmark reports.", no_args_is_help=True)
    command(report_app, report_compare, "compare")
    app.add_typer(report_app, name="report")
