"""``grapevine agent``: run the daemon in the foreground (systemd, a terminal, a test).

Under systemd (``Type=notify``) the agent says READY=1 once its state and
trust root are loaded and its ports are bound, STOPPING=1 when it starts to
drain, and pings WATCHDOG=1 at half of ``WatchdogSec=`` (node/sdnotify.py).
``--ui HOST:PORT`` also serves the read-only fleet page (node/ui.py), bound
before READY=1 is sent.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click


@click.command("agent")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), help="TOML config file.")
@click.option("--name", help="Node name (unique in the fleet).")
@click.option("--bind", help="HOST:PORT for peer traffic, /metrics and /health.")
@click.option("--advertise", help="HOST:PORT other nodes reach this one at (default: --bind).")
@click.option("--join", multiple=True, help="HOST:PORT of a node to join through (repeatable).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="State directory.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), help="Root every managed path goes through.")
@click.option("--trust", type=click.Path(dir_okay=False, path_type=Path), help="Trust root file (root.gv).")
@click.option("--network-key", type=click.Path(dir_okay=False, path_type=Path), help="Fleet network key file.")
@click.option("--tag", "tags", multiple=True, help="k=v fact for selectors (repeatable).")
@click.option("--log-format", type=click.Choice(["text", "json"]), help="Log lines as text or JSON.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="Log level.")
@click.option("--api-socket", type=click.Path(dir_okay=False, path_type=Path), help="Unix socket of the local API.")
@click.option("--run-user", help="User that run orders execute as (default: the agent's own).")
@click.option("--preset", "gossip_preset", type=click.Choice(["lan", "local"]), help="Gossip timing preset.")
@click.option("--event-loop", type=click.Choice(["uvloop", "asyncio"]), help="Event loop (default asyncio; uvloop costs about 10 MiB more memory).")
@click.option("--ui", help="HOST:PORT to serve the read-only fleet status page on (off by default).")
def agent(config_file: Path | None, **flags: object) -> None:
    """Run the grapevine daemon until SIGTERM."""
    from grapevine.node.config import load_config
    from grapevine.node.logs import setup_logging

    tags = flags.pop("tags")
    if tags:
        flags["tags"] = list(tags)  # type: ignore[assignment]
    cfg = load_config(config_file=config_file, flags=flags)
    setup_logging(cfg.name, cfg.log_format, cfg.log_level)
    uvloop = None
    if cfg.event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
            pass
    else:
        # Peer traffic is sealed with the network key over plain HTTP and the local API is a Unix
        # socket: the daemon never speaks TLS, and the hashes it uses (BLAKE2b, SHA-256) are built
        # into Python. asyncio and aiohttp import ssl only if it is there, hashlib falls back to
        # its built-in hashes without _hashlib, so OpenSSL stays out of the process: about 8 MiB
        # less resident memory per agent (benchmarks/RESULTS-mesh.md). Too late if another part
        # of this process already imported them; then they stay.
        for name in ("ssl", "_hashlib"):
            sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    import asyncio  # after the choice above: asyncio imports ssl when it can

    from grapevine.node.agent import Agent
    from grapevine.node.sdnotify import Notifier

    async def main() -> None:
        notifier = Notifier()
        node = Agent(cfg)
        watchdog = asyncio.get_running_loop().create_task(notifier.watchdog_loop(), name="sd-watchdog")
        ui = None
        try:
            if cfg.ui:
                from grapevine.node.ui import start_ui

                ui = await start_ui(node, cfg.ui)
            await node.run(ready=notifier.ready, stopping=notifier.stopping)
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            if ui is not None:
                await ui.cleanup()

    if uvloop is not None:
        uvloop.run(main())
    else:  # pragma: no cover
        asyncio.run(main())
