"""The `edgecls` command line. Each command imports its layer only when it runs.

User-supplied text (paths, labels, messages) is printed escaped or with markup off: a file named
`photo[copy].jpg` prints as it is named.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter out of the output

from . import cli_light  # noqa: E402

cli_light.fast_predict()  # a plain `edgecls predict` runs and exits here, before anything below loads

import json  # noqa: E402
import sys  # noqa: E402
from functools import wraps  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import List, Optional  # noqa: E402

import typer  # noqa: E402

from .cli_light import ACTIVATION_HELP, INTERPOLATION_HELP, RESIZE_HELP, LazyConsole, at_least, escape, folder_option, one_of, positive, within  # noqa: E402

from .errors import EdgeclsError, OptionError, stop_requested  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="From a folder of labelled photos to a measured, deployed image classifier.")
err = LazyConsole(stderr=True)
show = LazyConsole()


def friendly(fn):
    """Turn edgecls errors into one red line and exit code 2; Ctrl-C into 130 and SIGTERM into
    143, after the command's own clean-up has run."""

    def stopped() -> typer.Exit:
        terminated = cli_light.interrupted_exit_code() == 143
        err.print("terminated (SIGTERM); stopped and cleaned up" if terminated else "interrupted; stopped and cleaned up",
                  markup=False, highlight=False)
        return typer.Exit(cli_light.interrupted_exit_code())

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            result = fn(*args, **kwargs)
        except EdgeclsError as exc:
            if stop_requested():  # an interrupt that surfaced as another error
                raise stopped() from None
            err.print(f"[bold red]error:[/] {escape(exc)}", highlight=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            raise stopped() from None
        except OSError as exc:  # the machine's state (disk full, permissions, a file where a folder goes)
            err.print(f"[bold red]error:[/] {escape(cli_light.describe_os_error(exc))}", highlight=False)
            raise typer.Exit(2) from None
        if stop_requested():  # an interrupt swallowed by a broad `except` below: never report success
            raise stopped()
        return result

    return wrapper


def _size(value: Optional[str]) -> Optional[tuple[int, int]]:
    if value is None:
        return None
    try:
        parts = [int(v) for v in value.lower().replace("x", ",").split(",") if v.strip()]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1 or max(parts) > 4096:
        raise OptionError(f"--input-size {value!r}: expected N or HxW with sizes from 1 to 4096, such as 160 or 224x224")
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def _head_options(feature_crops: float, head_c: Optional[float]) -> None:
    """The feature head's options, checked before work (train and cv share them)."""
    if feature_crops:
        within("--feature-crops", feature_crops, 0.5, 1, high_open=True)
    if head_c is not None:
        within("--head-c", head_c, 0, 1e6, low_open=True)


@app.command()
@friendly
def train(
    dataset: Optional[Path] = typer.Argument(None, help="Image-folder dataset: one sub-folder per class."),
    backbone: str = typer.Option("mobilenet_v2", help="Backbone recipe (see `edgecls backbones`)."),
    weights: Optional[str] = typer.Option(None, help="imagenet | none | PATH to a .weights.h5 file (default: the recipe's)."),
    out: Path = typer.Option(Path("runs/train"), help="Output folder."),
    input_size: Optional[str] = typer.Option(None, help="N or HxW (default: the recipe's)."),
    epochs: int = typer.Option(10, help="Phase 1 epochs (frozen backbone)."),
    fine_tune_epochs: Optional[int] = typer.Option(None, help="Phase 2 epochs (top layers unfrozen); 0 skips; default: "
                                                   "5 with at least 2000 training images, else none (small sets overfit)."),
    feature_head: bool = typer.Option(True, "--feature-head/--gradient-head", help="Phase 1 as a logistic regression "
                                      "on backbone features computed once (default), or a head trained by gradient descent."),
    feature_crops: float = typer.Option(0.8, help="Feature head: also learn from the four corner crops of this "
                                        "fraction of each side (0: none; used when no fine-tuning follows)."),
    head_c: Optional[float] = typer.Option(None, help="Feature head's inverse L2 strength C (default: chosen by "
                                           "3-fold CV on the training split)."),
    batch_size: int = typer.Option(32),
    learning_rate: float = typer.Option(1e-3),
    fine_tune_learning_rate: float = typer.Option(1e-4),
    dropout: float = typer.Option(0.2, help="Dropout before the dense head (gradient-trained heads and fine-tuning)."),
    label_smoothing: float = typer.Option(0.0, help="Label smoothing of gradient-trained phases, in [0, 1)."),
    weight_decay: float = typer.Option(0.0, help="AdamW decoupled weight decay of gradient-trained phases (0: Adam)."),
    lr_schedule: str = typer.Option("constant", help="constant | cosine (one warm-up epoch, then cosine decay)."),
    val_fraction: float = typer.Option(0.2),
    test_fraction: float = typer.Option(0.0),
    seed: int = typer.Option(0),
    patience: int = typer.Option(3, help="Early stopping patience on validation loss."),
    class_weights: bool = typer.Option(False, help="Weight classes inversely to their frequency."),
    augment: bool = typer.Option(True, help="Flip/rotate/zoom/contrast augmentation while training."),
    flip: bool = typer.Option(True, help="Horizontal flips in augmentation (turn off for digits or text)."),
    precision: str = typer.Option("auto", help="auto | fp32 | bf16 | fp16 (mixed precision; the saved model is float32)."),
    deterministic: Optional[bool] = typer.Option(None, "--deterministic/--no-deterministic",
                                                 help="Reproducible kernels (default: on for CPU, off on a GPU)."),
    data_parallel: bool = typer.Option(False, help="Data parallel over all local devices (KERAS_BACKEND=jax)."),
    resume: Optional[Path] = typer.Option(None, help="Continue the killed run in this output folder from its last epoch."),
    recipe: Optional[Path] = typer.Option(None, help="Training recipe TOML (`edgecls tune` writes one); options "
                                          "given here win over it."),
    oversample: bool = typer.Option(False, help="Draw minority-class images again up to the largest class."),
):
    """Train a classifier by transfer learning (two phases) and save model, labels, curves and metrics."""
    if resume is not None:
        from .train import resume as resume_run

        return _train_summary(resume_run(resume, console=err.get()))
    if dataset is None:
        raise OptionError("missing DATASET (an image-folder dataset), or --resume OUT to continue a run")
    one_of("--precision", precision, ("auto", "fp32", "bf16", "fp16"))
    size = _size(input_size)
    at_least("--epochs", epochs, 1)
    at_least("--fine-tune-epochs", fine_tune_epochs, 0)
    at_least("--batch-size", batch_size, 1)
    within("--learning-rate", learning_rate, 0, 10, low_open=True)
    within("--fine-tune-learning-rate", fine_tune_learning_rate, 0, 10, low_open=True)
    within("--dropout", dropout, 0, 1, high_open=True)
    within("--label-smoothing", label_smoothing, 0, 1, high_open=True)
    within("--weight-decay", weight_decay, 0, 1, high_open=True)
    from .train import LR_SCHEDULES

    one_of("--lr-schedule", lr_schedule, LR_SCHEDULES)
    within("--val-fraction", val_fraction, 0, 1, low_open=True, high_open=True)
    within("--test-fraction", test_fraction, 0, 1, high_open=True)
    if val_fraction + test_fraction >= 1:
        raise OptionError(f"--val-fraction {val_fraction} and --test-fraction {test_fraction} leave no training images")
    at_least("--seed", seed, 0)
    at_least("--patience", patience, 0)
    _head_options(feature_crops, head_c)
    folder_option("--out", out)
    from .train import TrainConfig, train as run_train

    config = TrainConfig(backbone=backbone, weights=weights, input_size=size, epochs=epochs,
                         fine_tune_epochs=fine_tune_epochs, batch_size=batch_size, learning_rate=learning_rate,
                         fine_tune_learning_rate=fine_tune_learning_rate, dropout=dropout, val_fraction=val_fraction,
                         label_smoothing=label_smoothing, weight_decay=weight_decay, lr_schedule=lr_schedule,
                         test_fraction=test_fraction, seed=seed, patience=patience,
                         class_weights=class_weights, augment=augment, flip=flip, precision=precision,
                         feature_head=feature_head, feature_crops=feature_crops, head_c=head_c,
                         deterministic=deterministic, data_parallel=data_parallel, oversample=oversample)
    if recipe is not None:
        from .tune import apply_recipe, load_recipe

        config = apply_recipe(config, load_recipe(recipe))
    _train_summary(run_train(dataset, out, config, console=err.get()))


def _train_summary(result) -> None:
    val, tr = result.metrics["val"], result.metrics["train"]
    show.print(f"model:      {result.model_path}", markup=False)
    show.print(f"accuracy:   validation {val['accuracy']:.4f}, train {tr['accuracy']:.4f}, macro F1 {val['macro']['f1']:.4f}")
    show.print(f"curves:     {result.out_dir / 'training_curves.png'}", markup=False)
    show.print(f"confusion:  {result.out_dir / 'confusion_matrix.png'}", markup=False)
    for w in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(w)}")
    from .cv import small_split_note

    note = small_split_note(val["accuracy"], int(val["count"]))
    if note:
        err.print(f"note: {note}", markup=False, highlight=False)


@app.command()
@friendly
def export(
    model: Path = typer.Argument(..., help="A .keras model trained by edgecls."),
    format: Optional[str] = typer.Option(None, "--format", "-f", help="tflite, onnx, openvino, a comma list, or all (default tflite)."),
    quant: Optional[str] = typer.Option(None, "--quant", "-q", help="fp32, fp16, dynamic, int8, edgetpu, a comma list, or all (default fp32)."),
    target: Optional[str] = typer.Option(None, help="Take format and mode from a target profile (see `edgecls targets`)."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: MODEL's folder/export)."),
    dataset: Optional[Path] = typer.Option(None, help="Dataset for calibration and verification (default: the training set)."),
    calibration: Optional[Path] = typer.Option(None, help="Folder of calibration images (default: training split)."),
    calibration_count: int = typer.Option(300, help="Number of calibration images, a stratified sample of the training split."),
    max_accuracy_drop: float = typer.Option(1.0, help="Gate: largest allowed accuracy drop vs Keras, in points."),
    io_dtype: Optional[str] = typer.Option(None, help="tflite int8 only: uint8 (default) or int8 input/output."),
    int8_cpu: Optional[str] = typer.Option(None, help="CPU class int8 artifacts are made for: portable (default: "
                                           "correct on every CPU), x86-vnni, x86-avx2, arm; default: the target's."),
    min_agreement: Optional[float] = typer.Option(None, help="Gate: least top-1 agreement with Keras (0..1)."),
    explain: bool = typer.Option(False, "--explain", help="tflite/onnx: add the last feature map as a second output "
                                 "so `edgecls predict --explain` draws class activation maps on the device."),
):
    """Convert to TFLite/ONNX/OpenVINO, verify each artifact against the Keras model, gate on accuracy."""
    for name, value in (("--format", format), ("--quant", quant)):
        if value is not None and not all(part.strip() for part in value.split(",")):
            raise OptionError(f"{name} {value!r}: expected a name or a comma list of names, such as tflite,onnx")
    at_least("--calibration-count", calibration_count, 1)
    within("--max-accuracy-drop", max_accuracy_drop, 0, 100)
    one_of("--io-dtype", io_dtype, ("uint8", "int8"))
    folder_option("--out", out)
    from .cpu import INT8_CPU_CLASSES

    one_of("--int8-cpu", int8_cpu, tuple(INT8_CPU_CLASSES))
    if min_agreement is not None:
        within("--min-agreement", min_agreement, 0, 1)
    from .export.pipeline import export_model

    if target:
        from .targets import get_target

        profile = get_target(target)
        format, quant = format or profile.export["format"], quant or profile.export["quant"]
        err.print(f"target {profile.name}: exporting {format}:{quant}", markup=False)
    format, quant = format or "tflite", quant or "fp32"
    reports = export_model(model, format, quant, out, dataset, calibration, calibration_count,
                           max_accuracy_drop, io_dtype, console=err.get(), int8_cpu=int8_cpu,
                           min_agreement=min_agreement, target=target, explain=explain)
    from rich.table import Table

    count = next((r.notes["count"] for r in reports if "count" in r.notes), None)
    table = Table(title=f"export summary (on {count} verification images; Δ and agreement vs the Keras model, "
                        "agreement with its 95% interval)")
    table.add_column("artifact", no_wrap=True)
    for col in ("kept", "MB", "accuracy", "Δ pp", "agree", "max|Δp|", "s"):
        table.add_column(col, no_wrap=True)
    for r in reports:
        table.add_row(escape(Path(r.path).name if r.path else r.key), "yes" if r.passed else "[red]no[/]", f"{r.size_bytes / 1e6:.2f}",
                      f"{r.accuracy:.4f}" if r.accuracy is not None else "-",
                      f"{0.0 - r.accuracy_drop_pp:+.2f}" if r.accuracy_drop_pp is not None else "-",
                      f"{r.top1_agreement:.4f} [{r.notes['agreement_ci95'][0]:.3f}-{r.notes['agreement_ci95'][1]:.3f}]"
                      if r.top1_agreement is not None else "-",
                      f"{r.max_prob_diff:.4f}" if r.max_prob_diff is not None else "-", f"{r.seconds:.1f}")
    show.print(table)
    if any(r.path for r in reports):
        show.print(f"artifacts and manifests in {Path(next(r.path for r in reports if r.path)).parent}", markup=False)
    for r in reports:
        if r.error:
            err.print(f"[red]{escape(r.key)}:[/] {escape(r.error)}")
        tpu = r.notes.get("edgetpu")
        if tpu:
            err.print(f"edgetpu: {tpu.get('message') or ('compiled: %s ops on the Edge TPU, %s on the CPU' % (tpu.get('ops_on_edgetpu'), tpu.get('ops_on_cpu')))}",
                      markup=False)
    if not all(r.passed for r in reports):
        raise typer.Exit(1)


@app.command()
@friendly
def predict(
    artifact: Path = typer.Argument(..., help="A .tflite, .onnx or OpenVINO .xml model."),
    images: List[Path] = typer.Argument(..., help="Image files."),
    labels: Optional[Path] = typer.Option(None, help="Label file, for a model without a manifest."),
    normalization: Optional[str] = typer.Option(None, help="tf | torch | caffe | unit | raw, for a model without a manifest."),
    resize: Optional[str] = typer.Option(None, help=RESIZE_HELP),
    interpolation: Optional[str] = typer.Option(None, help=INTERPOLATION_HELP),
    top_k: int = typer.Option(3, "--top-k", "-k"),
    threads: Optional[int] = typer.Option(None),
    activation: Optional[str] = typer.Option(None, help=ACTIVATION_HELP),
    as_json: bool = typer.Option(False, "--json", help="One JSON line per image."),
    explain: bool = typer.Option(False, "--explain", help="Also write a class activation map overlay per image "
                                 "(artifacts exported with the explain option)."),
    explain_out: Path = typer.Option(Path("runs/explain"), help="Folder for the --explain overlays."),
):
    """Classify images with an exported artifact through the light runtime."""
    # A plain call never gets here: cli_light.fast_predict runs it without Typer and Rich. Both
    # share the option checks and the predict loop.
    cli_light.check_predict_options(top_k, threads, activation, resize, interpolation)
    clf = cli_light.open_classifier(artifact, labels, normalization, resize, threads, activation, interpolation)

    def overlay(image: Path) -> Optional[dict]:
        from .cam import explain_artifact

        cam = explain_artifact(clf, image, explain_out)["overlay"]
        return {"overlay": cam} if cam else None

    failed = cli_light.run_predict(clf, images, top_k, as_json, lambda line: print(line, flush=True),
                                   lambda line: print(line, file=sys.stderr, flush=True),
                                   overlay if explain else None)
    if failed:
        raise typer.Exit(1)


@app.command()
@friendly
def evaluate(
    model: Path = typer.Argument(..., help="A .keras model or an exported artifact."),
    dataset: Path = typer.Argument(..., help="Image-folder dataset."),
    split: str = typer.Option("auto", help="train | val | test | all | auto (val when the model records its split)."),
    out: Optional[Path] = typer.Option(None, help="Output folder for metrics.json and the confusion matrix."),
    threads: Optional[int] = typer.Option(None),
    activation: Optional[str] = typer.Option(None, help=ACTIVATION_HELP),
    resize: Optional[str] = typer.Option(None, help=RESIZE_HELP),
    interpolation: Optional[str] = typer.Option(None, help=INTERPOLATION_HELP),
):
    """Accuracy, per-class precision/recall/F1, confusion matrix, overfitting check."""
    cli_light.threads_option(threads)
    one_of("--activation", activation, ("softmax", "none"))
    one_of("--split", split, ("train", "val", "test", "all", "auto"))
    cli_light.preprocessing_options(resize, interpolation)
    folder_option("--out", out)
    from .workflows import evaluate_model

    options = {"num_threads": threads, "activation": activation} if model.suffix != ".keras" else {}
    options.update(resize=resize, interpolation=interpolation)
    result = evaluate_model(model, dataset, split, out, console=err.get(),
                            **{k: v for k, v in options.items() if v is not None})
    show.print(result["table"], markup=False, highlight=False)
    if "train_accuracy" in result:
        show.print(f"train accuracy {result['train_accuracy']:.4f}")
    if result.get("warning"):
        err.print(f"[yellow]warning:[/] {escape(result['warning'])}")
    show.print(f"confusion matrix: {result['confusion_matrix_png']}\nmetrics: {result['metrics_json']}", markup=False)


@app.command()
@friendly
def bench(
    artifacts: List[Path] = typer.Argument(..., help="Artifacts to measure."),
    target: Optional[str] = typer.Option(None, help="Engine options and reference latencies from a target profile."),
    dataset: Optional[Path] = typer.Option(None, help="Labelled image-folder dataset: adds accuracy and agreement."),
    threads: Optional[int] = typer.Option(None, help="Engine threads (default: the target's, else the engine's)."),
    batch: int = typer.Option(1),
    warmup: int = typer.Option(10, help="Minimum warm-up runs."),
    warmup_time: float = typer.Option(0.5, help="Minimum warm-up seconds."),
    runs: int = typer.Option(50, help="Minimum timed runs."),
    min_time: float = typer.Option(2.0, help="Minimum timed seconds."),
    rounds: int = typer.Option(1, help="Measure the artifacts in turn this many times and pool the timings."),
    timeout: float = typer.Option(900.0, help="Seconds one artifact's measurement may take before it is stopped."),
    activation: Optional[str] = typer.Option(None, help=ACTIVATION_HELP + " Used with --dataset."),
    out: Path = typer.Option(Path("runs/bench"), help="Folder for bench.json, bench.md and bench.html."),
):
    """Latency percentiles, throughput, size, memory (and accuracy) per artifact; JSON, Markdown, HTML.

    Each artifact runs with exactly the engine options `stream` would give it (recorded in the report)."""
    from .bench import bench as run_bench, check_options

    options = dict(batch=batch, warmup=warmup, warmup_seconds=warmup_time, min_runs=runs, min_seconds=min_time)
    cli_light.threads_option(threads)
    positive("--timeout", timeout)
    one_of("--activation", activation, ("softmax", "none"))
    check_options(rounds=rounds, threads=threads, timeout=timeout, **options)
    folder_option("--out", out)
    from .report import markdown, write_all

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


report_app = typer.Typer(help="Work with benchmark reports.", no_args_is_help=True)
app.add_typer(report_app, name="report")


@report_app.command("compare")
@friendly
def report_compare(
    before: Path = typer.Argument(..., help="Earlier bench.json (A)."),
    after: Path = typer.Argument(..., help="Later bench.json (B)."),
    fail_on_regression: bool = typer.Option(False, help="Exit 1 when anything regressed by more than 10%."),
):
    """What changed between two benchmark runs, per artifact and figure, as ratios B/A."""
    from .report import compare, load_report

    text, regressions = compare(load_report(before), load_report(after))
    show.print(text, markup=False, soft_wrap=True)
    if regressions:
        err.print("regressions:\n  " + "\n  ".join(regressions), markup=False)
        if fail_on_regression:
            raise typer.Exit(1)


@app.command()
@friendly
def stream(
    artifact: Path = typer.Argument(..., help="A .tflite, .onnx or OpenVINO .xml model."),
    source: str = typer.Argument(..., help="Camera index, video file, RTSP/HTTP URL, GStreamer pipeline, picamera2[:N] or image folder."),
    labels: Optional[Path] = typer.Option(None, help="Label file, for a model without a manifest."),
    normalization: Optional[str] = typer.Option(None, help="For a float model without a manifest."),
    resize: Optional[str] = typer.Option(None, help=RESIZE_HELP),
    interpolation: Optional[str] = typer.Option(None, help=INTERPOLATION_HELP),
    target: Optional[str] = typer.Option(None, help="Engine options from a target profile (threads, XNNPACK, delegate, OpenVINO hint)."),
    threads: Optional[int] = typer.Option(None, help="Engine threads (overrides the target's)."),
    top_k: int = typer.Option(3, "--top-k", "-k"),
    max_frames: int = typer.Option(0, help="Stop after this many frames (0: until the source ends)."),
    drop: Optional[bool] = typer.Option(None, "--drop/--no-drop", help="Keep only the newest frame (default: on for live sources)."),
    fps: float = typer.Option(0.0, help="Play an image folder at this frame rate (0: as fast as possible)."),
    save: Optional[Path] = typer.Option(None, help="Write an annotated video here (.mp4 or .avi)."),
    show: bool = typer.Option(False, "--show", help="Show an annotated window (needs OpenCV with GUI)."),
    json_lines: bool = typer.Option(True, "--json/--no-json", help="JSON lines on stdout."),
    retries: int = typer.Option(5, help="Reconnection attempts when a live source fails."),
    retry_interval: float = typer.Option(0.5, help="First reconnection wait in seconds (doubles each time)."),
    stats_interval: float = typer.Option(5.0, help="Seconds between statistics lines on stderr (0: off)."),
    activation: Optional[str] = typer.Option(None, help=ACTIVATION_HELP),
):
    """Classify a camera or video stream, pipelined, with live statistics."""
    cli_light.threads_option(threads)
    at_least("--top-k", top_k, 1)
    at_least("--max-frames", max_frames, 0)
    at_least("--fps", fps, 0)
    at_least("--retries", retries, 0)
    at_least("--retry-interval", retry_interval, 0)
    at_least("--stats-interval", stats_interval, 0)
    one_of("--activation", activation, ("softmax", "none"))
    cli_light.preprocessing_options(resize, interpolation)
    from .runtime import Classifier
    from .stream import JsonLinesSink, Stream, StreamOptions, VideoSink, WindowSink, install_signal_handlers, open_source
    from .targets import engine_options_for

    # The same call as `bench --target`: both run an artifact with the same engine options.
    options, notes = engine_options_for(artifact, target, threads)
    for note in notes:
        err.print(f"note: {note}", markup=False, highlight=False)
    clf = Classifier.from_artifact(artifact, labels=labels, normalization=normalization, activation=activation,
                                   resize=resize, interpolation=interpolation, **options)
    src = open_source(source, fps=fps)
    sinks = []
    if json_lines:
        sinks.append(JsonLinesSink(sys.stdout))
    if save:
        sinks.append(VideoSink(save, getattr(src, "fps", 0.0) or fps or 15.0))
    if show:
        sinks.append(WindowSink())
    runner = Stream(clf, src, sinks, StreamOptions(top_k=top_k, max_frames=max_frames, drop_frames=drop,
                                                   retries=retries, retry_interval=retry_interval,
                                                   stats_interval=stats_interval),
                    log=lambda msg: err.print(msg, highlight=False, markup=False))
    install_signal_handlers(runner)
    err.print(f"streaming {src.description} through {artifact.name} ({clf.engine.version})", markup=False)
    summary = runner.run()
    err.print("summary " + json.dumps(summary), markup=False, highlight=False)
    if runner.error:
        err.print(f"[bold red]error:[/] {escape(runner.error)}", highlight=False)
        raise typer.Exit(1)


@app.command()
@friendly
def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), help="Output folder."),
    epochs: int = typer.Option(15),
):
    """The whole pipeline on the embedded digits dataset: train, export, evaluate, benchmark, report."""
    at_least("--epochs", epochs, 1)
    folder_option("--out", out)
    from .workflows import quickstart as run_quickstart

    result = run_quickstart(out, epochs, console=err.get())
    show.print(Path(result["report"]).read_text(), markup=False, soft_wrap=True)
    show.print(f"report:    {result['report']}\nmodel:     {result['model']}", markup=False)
    for a in result["artifacts"]:
        show.print(f"artifact:  {a}", markup=False)
    show.print(f"bench:     {result['bench_md']}\nwall time: {result['seconds']:.0f} s", markup=False)
    if result["failed"]:
        err.print(f"[red]exports that failed verification:[/] {escape(', '.join(result['failed']))}")
        raise typer.Exit(1)


@app.command()
def backbones():
    """List backbone recipes."""
    from .models import recipes

    for r in recipes().values():
        show.print(f"{r.name:<20} {r.input_size[0]}x{r.input_size[1]}  {r.normalization:<6} {r.description}", markup=False)


@app.command("targets")
def list_targets():
    """List device target profiles."""
    from .targets import targets

    for t in targets().values():
        refs = "; ".join(f"{r['artifact']} {r['latency_ms']} ms" for r in t.references) or "no published reference"
        show.print(f"{t.name:<14} export {t.export.get('format')}:{t.export.get('quant'):<8} {t.description} [{refs}]; "
                   f"suits {', '.join(t.artifacts)}; engine options for {', '.join(sorted(t.engines))}", markup=False)


@app.command()
def formats():
    """List export formats and quantization modes."""
    from .export import FORMATS

    for spec in FORMATS.values():
        show.print(f"{spec.format:<9} {spec.quant:<8} {spec.suffix:<8} engine={spec.engine:<12} {spec.description}", markup=False)


# --- explanations, ensembles, cross-validation and tuning (issue 10) ---------------------------


@app.command()
@friendly
def explain(
    model: Path = typer.Argument(..., help="A .keras model trained by edgecls."),
    images: Optional[List[Path]] = typer.Argument(None, help="Image files to explain."),
    out: Path = typer.Option(Path("runs/explain"), help="Output folder for overlays and the gallery."),
    class_name: Optional[str] = typer.Option(None, "--class", help="Explain this class instead of the predicted one."),
    dataset: Optional[Path] = typer.Option(None, help="Dataset for the gallery of mistakes (default: the training set)."),
    split: str = typer.Option("val", help="Split whose mistakes the gallery shows: train | val | test | all."),
    gallery: bool = typer.Option(True, help="Write mistakes.html: the split's misclassified images with overlays."),
    limit: int = typer.Option(60, help="Most mistakes shown in the gallery."),
):
    """Grad-CAM overlays for images, and an HTML gallery of the validation images the model gets wrong."""
    from rich.markup import escape

    from .explain import explain_images, mistakes_gallery
    from .manifest import load_manifest

    if limit < 1:
        raise EdgeclsError(f"--limit must be at least 1, got {limit}")
    if not images and not gallery:
        raise EdgeclsError("nothing to explain: give image files, or keep the gallery of mistakes (--gallery)")
    for r in explain_images(model, images or [], out, class_name):
        show.print(f"{escape(r['image'])}: predicted {escape(r['predicted'])} ({r['probability']:.3f}); "
                   f"evidence for {escape(r['explained'])}: {escape(r['overlay'])}", highlight=False)
    if gallery:
        manifest = load_manifest(model)
        source = dataset or Path((manifest.source.get("dataset") if manifest else "") or "")
        if not str(source) or str(source) == "." or not source.is_dir():
            err.print("gallery skipped: no dataset found; pass --dataset DIR", highlight=False, markup=False)
        else:
            g = mistakes_gallery(model, source, out, split, limit)
            show.print(f"gallery: {escape(g['page'])} ({g['wrong']} of {g['count']} {escape(split)} images wrong, "
                       f"{g['shown']} shown)", highlight=False)


@app.command()
@friendly
def ensemble(
    models: List[Path] = typer.Argument(..., help="Two or more .keras models trained by edgecls on the same classes."),
    out: Path = typer.Option(Path("runs/ensemble"), help="Output folder for model.keras, its manifest and metrics."),
    dataset: Optional[Path] = typer.Option(None, help="Dataset for the validation comparison (default: the members' training set)."),
):
    """Average several models' probabilities in one Keras model that exports, evaluates and benchmarks like any."""
    from rich.markup import escape
    from rich.table import Table

    from .ensemble import build_ensemble

    result = build_ensemble(models, out, dataset)
    show.print(f"model:      {escape(str(result.model_path))}", highlight=False)
    if result.metrics:
        table = Table(title=f"validation split ({result.metrics['count']} images)")
        for col in ("model", "file", "accuracy", "balanced acc", "macro F1"):
            table.add_column(col, no_wrap=col != "file")
        for name, row in result.metrics.items():
            if isinstance(row, dict):
                table.add_row(name, escape(row["model"]), f"{row['accuracy']:.4f}", f"{row['balanced_accuracy']:.4f}",
                              f"{row['macro_f1']:.4f}")
        show.print(table)
        show.print(f"ensemble vs best member ({result.metrics['best_member']}): "
                   f"{result.metrics['gain_over_best_member_pp']:+.2f} pp")
    for w in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(w)}")


def _base_config(backbone, weights, input_size, epochs, fine_tune_epochs, batch_size, learning_rate, dropout, seed,
                 augment, oversample, class_weights, recipe, feature_crops=0.8, head_c=None):
    """A TrainConfig from the shared cv/tune options (a --recipe fills what the options leave at default)."""
    from .train import TrainConfig

    at_least("--epochs", epochs, 1)
    at_least("--fine-tune-epochs", fine_tune_epochs, 0)
    at_least("--batch-size", batch_size, 1)
    within("--learning-rate", learning_rate, 0, 10, low_open=True)
    within("--dropout", dropout, 0, 1, high_open=True)
    at_least("--seed", seed, 0)
    _head_options(feature_crops, head_c)
    config = TrainConfig(backbone=backbone, weights=weights, input_size=_size(input_size), epochs=epochs,
                         fine_tune_epochs=fine_tune_epochs, batch_size=batch_size, learning_rate=learning_rate,
                         dropout=dropout, seed=seed, augment=augment, oversample=oversample, class_weights=class_weights,
                         feature_crops=feature_crops, head_c=head_c)
    if recipe is not None:
        from .tune import apply_recipe, load_recipe

        config = apply_recipe(config, load_recipe(recipe))
    config.validate()
    return config


@app.command("cv")
@friendly
def cross_validation(
    dataset: Path = typer.Argument(..., help="Image-folder dataset: one sub-folder per class."),
    folds: int = typer.Option(5, help="Number of stratified folds (at least 2)."),
    out: Path = typer.Option(Path("runs/cv"), help="Output folder: cv.json, cv.md, cv.png and one model per fold."),
    probe: bool = typer.Option(False, "--probe", help="The frozen linear probe instead of training: backbone features "
                               "once, logistic regression per fold (fast)."),
    recipe: Optional[Path] = typer.Option(None, help="Training recipe TOML (`edgecls tune` writes one)."),
    backbone: str = typer.Option("mobilenet_v2", help="Backbone recipe (see `edgecls backbones`)."),
    weights: Optional[str] = typer.Option(None, help="imagenet | none | PATH to a .weights.h5 file."),
    input_size: Optional[str] = typer.Option(None, help="N or HxW (default: the backbone's)."),
    epochs: int = typer.Option(10, help="Phase 1 epochs."),
    fine_tune_epochs: Optional[int] = typer.Option(None, help="Phase 2 epochs; 0 skips; default: by data size."),
    batch_size: int = typer.Option(32),
    learning_rate: float = typer.Option(1e-3),
    dropout: float = typer.Option(0.2),
    seed: int = typer.Option(0, help="Seeds the fold assignment and the training."),
    augment: bool = typer.Option(True),
    oversample: bool = typer.Option(False, help="Draw minority-class images again up to the largest class."),
    class_weights: bool = typer.Option(False, help="Weight classes inversely to their frequency."),
    feature_crops: float = typer.Option(0.8, help="Feature head: corner crops of this side fraction (0: none)."),
    head_c: Optional[float] = typer.Option(None, help="Feature head's C (default: chosen by inner CV)."),
):
    """Stratified k-fold cross-validation: mean ± std of accuracy and macro F1, per-fold table and plot."""
    from rich.markup import escape

    at_least("--folds", folds, 2)
    config = _base_config(backbone, weights, input_size, epochs, fine_tune_epochs, batch_size, learning_rate, dropout,
                          seed, augment, oversample, class_weights, recipe, feature_crops, head_c)
    if probe:
        from .cv import probe_cv, probe_features

        feats, targets, labels = probe_features(dataset, config.backbone, config.weights, config.input_size)
        result = probe_cv(feats, targets, labels, folds, seed, out, "balanced" if class_weights else None)
    else:
        from .cv import cross_validate

        result = cross_validate(dataset, out, config, folds, console=err.get() if hasattr(err, "get") else err,
                                on_fold=lambda r: err.print(f"fold {r['fold']}: accuracy {r['accuracy']:.4f}, "
                                                            f"macro F1 {r['macro_f1']:.4f}", highlight=False))
    show.print(Path(result.paths["md"]).read_text(), markup=False)
    show.print(result.line(), highlight=False, markup=False)
    show.print(f"table: {escape(result.paths['md'])}\nplot:  {escape(result.paths['png'])}", highlight=False)


@app.command("tune")
@friendly
def tune_command(
    dataset: Path = typer.Argument(..., help="Image-folder dataset: one sub-folder per class."),
    out: Path = typer.Option(Path("runs/tune"), help="Output folder: trials.md/json, tune.png, best_recipe.toml."),
    trials: int = typer.Option(10, help="Budget: number of trials (trial 0 is the untuned configuration)."),
    timeout: Optional[float] = typer.Option(None, help="Budget: stop starting trials after this many seconds."),
    folds: int = typer.Option(3, help="Score by this many CV folds; 0 scores on the validation split (faster, noisier)."),
    sizes: Optional[str] = typer.Option(None, help="Input sizes to search, such as 96,128,160."),
    backbones: Optional[str] = typer.Option(None, help="Backbones to search, such as mobilenet_v2,efficientnet_b0."),
    fine_tune: Optional[str] = typer.Option(None, help="Fine-tuning epochs to search, such as 0,5 (0: frozen backbone)."),
    recipe: Optional[Path] = typer.Option(None, help="Start from this training recipe TOML."),
    backbone: str = typer.Option("mobilenet_v2"),
    weights: Optional[str] = typer.Option(None, help="imagenet | none | PATH to a .weights.h5 file."),
    input_size: Optional[str] = typer.Option(None, help="N or HxW of the untuned configuration."),
    epochs: int = typer.Option(10),
    fine_tune_epochs: Optional[int] = typer.Option(None),
    batch_size: int = typer.Option(32),
    seed: int = typer.Option(0),
    confirm: bool = typer.Option(True, "--confirm/--no-confirm", help="Score the best and the untuned configuration "
                                 "again on fresh folds (the best of many noisy trials is biased upwards)."),
):
    """Search the head (crops, regularisation), learning rates, dropout, augmentation (and sizes, backbones,
    fine-tuning) with Optuna; save the best recipe."""
    from rich.markup import escape

    from .tune import search_space, tune as run_tune

    at_least("--trials", trials, 1)
    if timeout is not None:
        within("--timeout", timeout, 0, 7 * 86400, low_open=True)
    if folds == 1 or folds < 0:
        raise OptionError(f"--folds must be 0 or at least 2, got {folds}")

    def items(value: Optional[str], name: str) -> list[str]:
        parts = [p.strip() for p in (value or "").split(",") if p.strip()]
        if value is not None and not parts:
            raise OptionError(f"{name} {value!r}: expected a comma list")
        return parts

    try:
        size_list = [int(s) for s in items(sizes, "--sizes")]
        tune_list = [int(s) for s in items(fine_tune, "--fine-tune")]
    except ValueError:
        raise OptionError("--sizes and --fine-tune take comma lists of whole numbers, such as 96,128") from None
    for s in size_list:
        within("--sizes", s, 32, 1024)
    base = _base_config(backbone, weights, input_size, epochs, fine_tune_epochs, batch_size, 1e-3, 0.2, seed, True,
                        False, False, recipe)
    space = search_space(base, size_list, items(backbones, "--backbones"), tune_list)
    result = run_tune(dataset, out, base, trials, timeout, folds, space, seed,
                      console=err.get() if hasattr(err, "get") else err,
                      on_trial=lambda r: err.print(
                          f"trial {r['trial']}: score {r['score']:.4f} "
                          + (f"(same settings as trial {r['repeat_of']}, not retrained) " if "repeat_of" in r
                             else f"({r['seconds']:.0f} s) ") + json.dumps(r["params"]), highlight=False, markup=False),
                      confirm=confirm)
    show.print(Path(result.paths["md"]).read_text(), markup=False)
    show.print(f"untuned {result.baseline['score']:.4f} -> best {result.best['score']:.4f} "
               f"({100 * result.improvement:+.1f} points)", highlight=False)
    c = result.confirmation
    if c:
        show.print(f"fresh folds (seed {c['fold_seed']}): untuned {c['baseline']['score']:.4f} -> best "
                   f"{c['best']['score']:.4f} ({100 * c['gain']:+.1f} points)", highlight=False)
    show.print(f"recipe: {escape(result.paths['recipe'])}  (edgecls train DATASET --recipe ...)\n"
               f"plot:   {escape(result.paths['png'])}", highlight=False)


def main() -> None:
    cli_light.install_sigterm()
    try:
        app()
    except (SystemExit, KeyboardInterrupt):
        if not stop_requested():
            raise
        # Stopped by a signal: the command's clean-up has run. Leave without interpreter
        # finalization, where a late interrupt in a library's thread or atexit hook would turn
        # the documented 130/143 into death by signal.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(cli_light.interrupted_exit_code())


if __name__ == "__main__":
    sys.exit(main())
