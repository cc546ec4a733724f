"""``grapevine bootstrap``: cloud-init user data with which a new machine joins the fleet by itself.

The printed ``#cloud-config`` document

- writes ``/etc/grapevine/agent.toml`` (0644), the trust root
  ``/etc/grapevine/root.gv`` (0644) and the fleet network key
  ``/etc/grapevine/fleet.netkey`` (0600, root only);
- writes and runs ``/usr/local/sbin/grapevine-bootstrap`` (0700), which
  installs grapevine into ``/opt/grapevine`` (a virtual environment; pip from
  the package registry, or ``--wheel-url``), links ``/usr/local/bin/grapevine``,
  names the node (``--name``, else the machine's short host name) and finds
  the address others reach it at (``--advertise``, else the source address of
  its route to the first join contact) into ``/etc/grapevine/agent.env``,
  installs the systemd unit shipped in the package and enables it.

The agent then joins through the contacts, receives the bundles that target
its tags by gossip and converges, with no operator command. Everything given
is checked here (addresses, tags, the trust root's signatures, the key file's
format and mode) so a typo fails on the operator's desk, not at first boot.
"""

from __future__ import annotations

import base64
import json
import shlex
from pathlib import Path

import click

from grapevine.gossip.errors import ConfigError, GrapevineError

ETC = "/etc/grapevine"
VENV = "/opt/grapevine"
SCRIPT = "/usr/local/sbin/grapevine-bootstrap"
DEFAULT_PORT = 7946
UNIT = "grapevine-agent.service"


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string with ASCII escapes is a valid TOML basic string


def agent_toml(*, join: list[str], port: int, tags: dict[str, str], name: str | None, advertise: str | None) -> str:
    lines = [
        "# Written by `grapevine bootstrap`. Settings in /etc/grapevine/agent.env (GRAPEVINE_*) win over",
        "# this file; the node's name and advertised address are found there when not given here.",
    ]
    if name:
        lines.append(f"name = {_toml_str(name)}")
    if advertise:
        lines.append(f"advertise = {_toml_str(advertise)}")
    lines += [
        f'bind = "0.0.0.0:{port}"',
        f"join = [{', '.join(_toml_str(j) for j in join)}]",
        'data_dir = "/var/lib/grapevine"',
        'root = "/"',
        f'trust = "{ETC}/root.gv"',
        f'network_key = "{ETC}/fleet.netkey"',
        'log_format = "json"',
        "",
        "[tags]",
    ]
    lines += [f"{k} = {_toml_str(v)}" for k, v in tags.items()]
    return "\n".join(lines) + "\n"


def bootstrap_script(*, install: str, first_join_host: str, port: int, name: str | None, advertise: str | None) -> str:
    """The first-boot script (POSIX sh). Re-running it is harmless: an existing install is kept."""
    q = shlex.quote
    lines = [
        "#!/bin/sh",
        "# Written by `grapevine bootstrap`: install grapevine, name this node, start the agent.",
        "set -eu",
        f"VENV={VENV}",
        'if [ ! -x "$VENV/bin/grapevine" ]; then',
        '    python3 -m venv "$VENV"',
        f'    "$VENV/bin/pip" install --quiet {q(install)}',
        "fi",
        'ln -sf "$VENV/bin/grapevine" /usr/local/bin/grapevine',
        "umask 077",
        f"envfile={ETC}/agent.env",
        ': > "$envfile.new"',
    ]
    if not name:
        lines += [
            "name=$(hostname -s)",
            'echo "GRAPEVINE_NAME=$name" >> "$envfile.new"',
        ]
    if not advertise:
        lines += [
            f"addr=$(ip -o route get {q(first_join_host)} | sed -n 's/.* src \\([^ ]*\\).*/\\1/p')",
            'if [ -z "$addr" ]; then',
            f'    echo "grapevine-bootstrap: no route to {first_join_host}; give --advertise" >&2',
            "    exit 1",
            "fi",
            'case "$addr" in *:*) addr="[$addr]" ;; esac',
            f'echo "GRAPEVINE_ADVERTISE=$addr:{port}" >> "$envfile.new"',
        ]
    lines += [
        'chmod 0600 "$envfile.new"',
        'mv "$envfile.new" "$envfile"',
        "umask 022",
        f"unit=$(\"$VENV/bin/python\" -c 'import grapevine.node, os; "
        f"print(os.path.join(grapevine.node.__path__[0], \"{UNIT}\"))')",
        f'install -m 0644 "$unit" /etc/systemd/system/{UNIT}',
        "systemctl daemon-reload",
        f"systemctl enable --now {UNIT}",
    ]
    return "\n".join(lines) + "\n"


def _dumper():
    import yaml

    class Dumper(yaml.SafeDumper):
        """Multi-line strings as literal blocks, so the user data reads like the files it writes."""

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return Dumper


def user_data(*, join: list[str], trust: bytes, network_key: str, tags: dict[str, str], name: str | None,
              advertise: str | None, port: int, install: str) -> str:
    import yaml

    from grapevine.node.config import parse_hostport

    first_host, _ = parse_hostport(join[0], "join")
    doc = {
        "package_update": True,
        "packages": ["python3", "python3-venv", "iproute2"],
        "write_files": [
            {"path": f"{ETC}/agent.toml", "owner": "root:root", "permissions": "0644",
             "content": agent_toml(join=join, port=port, tags=tags, name=name, advertise=advertise)},
            {"path": f"{ETC}/root.gv", "owner": "root:root", "permissions": "0644", "encoding": "b64",
             "content": base64.b64encode(trust).decode("ascii")},
            {"path": f"{ETC}/fleet.netkey", "owner": "root:root", "permissions": "0600",
             "content": network_key},
            {"path": SCRIPT, "owner": "root:root", "permissions": "0700",
             "content": bootstrap_script(install=install, first_join_host=first_host, port=port,
                                         name=name, advertise=advertise)},
        ],
        "runcmd": [[SCRIPT]],
    }
    body = yaml.dump(doc, Dumper=_dumper(), sort_keys=False, default_flow_style=False, width=1000)
    return "#cloud-config\n# grapevine: join " + ", ".join(join) + "\n" + body


def _check(join: tuple[str, ...], trust: Path, network_key: Path, tags: tuple[str, ...], name: str | None,
           advertise: str | None) -> tuple[bytes, str, dict[str, str]]:
    from grapevine.node.config import NAME_RE, parse_hostport, parse_tags
    from grapevine.node.netkey import encode_key_file, read_key_file
    from grapevine.policy.trust_files import load_root_file

    if not join:
        raise ConfigError("--join: at least one HOST:PORT of a running agent is needed")
    for j in join:
        parse_hostport(j, "--join")
    if advertise:
        parse_hostport(advertise, "--advertise")
    if name is not None and not NAME_RE.match(name):
        raise ConfigError(f"--name: {name!r} must be 1..63 letters, digits, '.', '_' or '-'")
    parsed_tags = parse_tags(list(tags), "--tag")
    try:
        load_root_file(trust)
    except GrapevineError as exc:
        raise ConfigError(f"--trust: {exc}") from None
    key = read_key_file(network_key)  # format and mode (0600) checked; a ConfigError names the file
    return trust.read_bytes(), encode_key_file(key), parsed_tags


@click.command("bootstrap")
@click.option("--join", multiple=True, required=True, help="HOST:PORT of a running agent (repeatable).")
@click.option("--trust", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Trust root file (root.gv).")
@click.option("--network-key", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Fleet network key file.")
@click.option("--tag", "tags", multiple=True, help="k=v fact for selectors (repeatable).")
@click.option("--name", default=None, help="Node name (default: the machine's short host name at first boot).")
@click.option("--advertise", default=None,
              help="HOST:PORT others reach the node at (default: its source address towards the first --join).")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(1, 65535), help="Peer port.")
@click.option("--package", "package", default=None, help="pip requirement to install (default: this version of grapevine-mesh).")
@click.option("--wheel-url", default=None, help="Install this wheel (URL or path on the machine) instead of --package.")
def bootstrap(join: tuple[str, ...], trust: Path, network_key: Path, tags: tuple[str, ...], name: str | None,
              advertise: str | None, port: int, package: str | None, wheel_url: str | None) -> None:
    """Print cloud-init user data with which a new machine installs grapevine, joins and converges."""
    if package and wheel_url:
        raise click.UsageError("give --package or --wheel-url, not both")
    trust_bytes, key_text, parsed_tags = _check(join, trust, network_key, tags, name, advertise)
    if wheel_url:
        install = wheel_url
    elif package:
        install = package
    else:
        from importlib.metadata import version

        install = f"grapevine-mesh=={version('grapevine-mesh')}"
    click.echo(user_data(join=list(join), trust=trust_bytes, network_key=key_text, tags=parsed_tags, name=name,
                         advertise=advertise, port=port, install=install), nl=False)
