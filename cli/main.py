"""Entry point of the ``grapevine`` command.

Sub-commands live in their own modules and are imported only when used, so
``grapevine keys gen`` does not pay for aiohttp or matplotlib. Exit status:
0 success, 1 the work failed, 2 usage or bad input (any ``GrapevineError``).
"""

from __future__ import annotations

import importlib
import sys

import click

from grapevine.gossip.errors import GrapevineError

# command name -> "module:attribute". Modules that are not there yet are
# simply not offered. Names are stable: add to this list, never rename.
COMMANDS: dict[str, str] = {
    "keys": "grapevine.cli.keys:keys",
    "netkey": "grapevine.cli.netkey:netkey",
    "pins": "grapevine.cli.pins:pins",
    "trust": "grapevine.cli.trust:trust",
    "bundle": "grapevine.cli.bundle:bundle",
    "converge": "grapevine.cli.converge:converge",
    "agent": "grapevine.cli.agent:agent",
    "inject": "grapevine.cli.fleet:inject",
    "run": "grapevine.cli.run:run",
    "status": "grapevine.cli.fleet:status",
    "members": "grapevine.cli.fleet:members",
    "bundles": "grapevine.cli.fleet:bundles",
    "history": "grapevine.cli.fleet:history",
    "rollback": "grapevine.cli.fleet:rollback",
    "rollout": "grapevine.cli.rollout:rollout",
    "simulate": "grapevine.cli.simulate:simulate",
    "demo": "grapevine.cli.demo:demo",
    "bootstrap": "grapevine.cli.bootstrap:bootstrap",
    "completion": "grapevine.cli.completion:completion",
}


def _load(name: str) -> click.Command | None:
    module_name, attr = COMMANDS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise
    return getattr(module, attr)


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(n for n in COMMANDS if _load(n) is not None)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        return _load(cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="grapevine-mesh")
def cli() -> None:
    """grapevine: a peer-to-peer gossip configuration mesh."""


def main(argv: list[str] | None = None) -> int:
    try:
        rv = cli.main(args=argv, prog_name="grapevine", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return 2 if isinstance(exc, click.UsageError) else exc.exit_code
    except GrapevineError as exc:
        text = str(exc)  # the reason first, as metrics, logs and the API spell it
        click.echo(f"error: {text}" if text.startswith(f"{exc.reason}:") else f"error: {exc.reason}: {text}", err=True)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
