"""`edgecls launch`: start N processes of a command as one multi-process run on this machine (or
this machine's processes of a run over several), stopping all when one fails. A thin name for
`python -m edgecls.distributed.launch`, whose options it takes as they are."""
from __future__ import annotations

import typer


def launch(ctx: typer.Context):
    """Start N processes of one multi-process run (edgecls launch --help: its options)."""
    from ..distributed.launch import main

    raise typer.Exit(main(list(ctx.args), prog="edgecls launch"))


def register(app: typer.Typer) -> None:
    # The launcher parses its own options (argparse), --help included, and the command after --.
    app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                  "help_option_names": []}, add_help_option=False)(launch)
