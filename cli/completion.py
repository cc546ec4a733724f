"""``grapevine completion bash|zsh``: print the shell completion script.

The script asks the ``grapevine`` command itself for candidates (through
``_GRAPEVINE_COMPLETE``), so it completes sub-commands and options of the
installed version. Install it with one line:

    grapevine completion bash > /etc/bash_completion.d/grapevine
    grapevine completion zsh > "${fpath[1]}/_grapevine"     # or: eval "$(grapevine completion zsh)" in ~/.zshrc
"""

from __future__ import annotations

import click

SHELLS = ("bash", "zsh")
COMPLETE_VAR = "_GRAPEVINE_COMPLETE"


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the completion script for SHELL (bash or zsh)."""
    from click.shell_completion import get_completion_class

    from grapevine.cli.main import cli

    cls = get_completion_class(shell)
    click.echo(cls(cli, {}, "grapevine", COMPLETE_VAR).source())
