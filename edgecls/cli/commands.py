"""The Typer application: the command groups, registered in this order.

Adding a command group is one module under edgecls/cli/ that defines `register(app)` (it adds
its commands with `common.command`) and one line in GROUPS.
"""
from __future__ import annotations

import functools
from importlib import import_module

import typer

GROUPS = (
    "train",        # edgecls train
    "export",       # edgecls export
    "predict",      # edgecls predict (a plain call runs in plain_predict, without Typer)
    "evaluate",     # edgecls evaluate
    "bench",        # edgecls bench, edgecls report compare
    "stream",       # edgecls stream
    "quickstart",   # edgecls quickstart
    "info",         # edgecls backbones, targets, formats
    "explain",      # edgecls explain
    "ensemble",     # edgecls ensemble
    "cv",           # edgecls cv
    "tune",         # edgecls tune
    "serve",        # edgecls serve, edgecls serve-unit
    "deploy",       # edgecls deploy
    "doctor",       # edgecls doctor
    "launch",       # edgecls launch (several processes of one run)
    "pull",         # edgecls pull (a device's labelled photos)
    "push",         # edgecls push (a model to one device or a fleet)
)


@functools.cache
def build_app() -> typer.Typer:
    """The `edgecls` Typer application with every command group registered."""
    app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                      help="From a folder of labelled photos to a measured, deployed image classifier.")
    for group in GROUPS:
        import_module(f"{__package__}.{group}").register(app)
    return app
