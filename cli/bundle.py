"""``grapevine bundle``: pack policy files into signed bundles, verify and show them.

A packed bundle file (``.gv``) is the encoded ``SignedItem`` ``bundle/<name>``,
byte for byte what travels between nodes.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import click

from grapevine.gossip.errors import GrapevineError, PolicyError
from grapevine.policy.admission import Admission, verify_bundle_file, wall_ms
from grapevine.policy.bundle import Bundle, bundles_from_file, pack
from grapevine.policy.keys import SigningKey
from grapevine.policy.refusal import Refusal
from grapevine.policy.trust_files import load_root_file, read_item_file, write_item_file

from .output import emit_json, json_option
from .trust import trust_errors

GV_SUFFIX = ".gv"


def validate_resources(bundles: list[Bundle], context: list[Bundle] = ()) -> bool:
    """Check resources with the catalog, together with ``context`` bundles that
    ``require``/``notify`` may refer to; False if the catalog is not available."""
    try:
        from grapevine.policy.catalog import validate_bundles
    except ModuleNotFoundError as exc:
        if exc.name != "grapevine.policy.catalog":
            raise
        return False
    names = {b.name for b in bundles}
    validate_bundles(list(bundles) + [c for c in context if c.name not in names])
    return True


def load_context(paths: tuple[str, ...]) -> list[Bundle]:
    """Bundles from policy files or packed ``.gv`` files, used only for validation."""
    out: list[Bundle] = []
    for p in paths:
        if p.endswith(GV_SUFFIX):
            item = read_item_file(p, "bundle")
            try:
                out.append(Bundle.decode(item.payload))
            except GrapevineError as exc:
                raise PolicyError(f"{p}: {exc}") from None
        else:
            out.extend(bundles_from_file(p))
    return out


def file_name(bundle: Bundle) -> str:
    """``web/nginx`` -> ``web.nginx.gv`` (names have no dots at the start of a part, so this is reversible enough to read)."""
    return bundle.name.replace("/", ".") + GV_SUFFIX


def output_paths(bundles: list[Bundle], outs: tuple[str, ...]) -> list[Path]:
    if len(outs) == len(bundles) and not (len(outs) == 1 and Path(outs[0]).is_dir()):
        return [Path(o) for o in outs]
    if len(outs) != 1:
        raise PolicyError(f"{len(bundles)} bundles but {len(outs)} --out values: give one directory or one file per bundle")
    out = Path(outs[0])
    if out.exists() and not out.is_dir():
        raise PolicyError(f"{out} is a file but the policy holds {len(bundles)} bundles: give a directory or one --out per bundle")
    out.mkdir(parents=True, exist_ok=True)
    return [out / file_name(b) for b in bundles]


def check_before_inject(client, items: list) -> bool:
    """Check every bundle in ``items`` against the agent's current trust root before any is sent,
    so a policy file is injected whole or not at all (``Refusal`` names the first bundle refused).
    False when the agent holds no root this can read; the agent checks each item anyway."""
    import base64
    import binascii

    from grapevine.policy.bundle import BUNDLE_KEY_PREFIX
    from grapevine.policy.trust import ROOT_KEY
    from grapevine.policy.trust_files import item_from_file_bytes

    try:
        versions = client.get(f"/v1/history?name={quote(ROOT_KEY, safe='')}")["versions"]
        current = next(v["version"] for v in versions if v["current"])
        encoded = client.get(f"/v1/item?key={quote(ROOT_KEY, safe='')}&version={quote(current, safe='')}")["item"]
        admission = Admission(item_from_file_bytes(base64.b64decode(encoded), "the agent's trust root"))
    except (GrapevineError, StopIteration, KeyError, TypeError, ValueError, binascii.Error):
        return False
    now = wall_ms()
    for item in items:
        if item.key.startswith(BUNDLE_KEY_PREFIX):
            admission.verify_bundle_item(item, now)
    return True


@click.group()
def bundle() -> None:
    """Pack, verify and show signed policy bundles."""


@bundle.command("pack")
@click.argument("policy_file", type=click.Path(dir_okay=False))
@click.option("--key", "key_path", required=True, help="Private key of the publisher that signs.")
@click.option("--out", "outs", multiple=True, required=True, help="Bundle file (.gv), or a directory for several bundles; repeat to name each.")
@click.option("--trust", "trust_path", default=None, help="Also check the signed bundles would be admitted under this root: key, name prefix and the"
              " prefix's grant (paths, resource types, target ceiling); exit 1 with OutOfScope naming the resource if not.")
@click.option("--with", "context_paths", multiple=True, help="Policy or .gv file whose bundles these may require/notify (validated together, not packed; repeatable).")
@json_option
def pack_cmd(policy_file, key_path, outs, trust_path, context_paths, as_json) -> None:
    """Validate POLICY_FILE (.yaml/.toml/.py) and sign each bundle in it.

    A require or notify must name a resource in these bundles or in a
    bundle given with --with.
    """
    with trust_errors(as_json):
        key = SigningKey.load(key_path)
        bundles = bundles_from_file(policy_file)
        validated = validate_resources(bundles, load_context(context_paths))
        paths = output_paths(bundles, outs)
        now = wall_ms()
        items = [pack(b, key, now) for b in bundles]
        if trust_path is not None:
            admission = Admission(load_root_file(trust_path)[0])
            for item in items:
                admission.verify_bundle_item(item, now)
        written = []
        for b, path, item in zip(bundles, paths, items):
            write_item_file(path, item)
            written.append({"name": b.name, "out": str(path), "version": list(item.version), "bytes": len(item.encode())})
    if as_json:
        emit_json({"ok": True, "author": key.key_id, "validated": validated, "bundles": written})
    else:
        for w in written:
            click.echo(f"{w['out']}: bundle {w['name']} signed by {key.key_id} ({w['bytes']} bytes)")


@bundle.command("verify", short_help="Check a bundle file against a trust root.")
@click.argument("bundle_file", type=click.Path(dir_okay=False))
@click.option("--trust", "trust_path", required=True, help="Trust root file to verify against.")
@click.option("--pin", default=None, help="Expected fingerprint of the trust root file.")
@json_option
def verify(bundle_file, trust_path, pin, as_json) -> None:
    """Exit 0 if the bundle would be admitted under the root, else 1 with the reason name."""
    with trust_errors(as_json, bundle=bundle_file):
        b = verify_bundle_file(bundle_file, trust_path, pinned=pin)
        item = read_item_file(bundle_file, "bundle")
    if as_json:
        emit_json({"ok": True, "bundle": bundle_file, "name": b.name, "author": item.author, "version": list(item.version)})
    else:
        click.echo(f"ok: bundle {b.name} signed by {item.author}")


@bundle.command("show")
@click.argument("bundle_file", type=click.Path(dir_okay=False))
@json_option
def show(bundle_file, as_json) -> None:
    """Print what a bundle file holds (signatures are not checked; use verify)."""
    with trust_errors(as_json):
        item = read_item_file(bundle_file, "bundle")
        try:
            b = Bundle.decode(item.payload)
        except GrapevineError as exc:
            raise Refusal("Malformed", f"{bundle_file}: {exc}") from None
    doc = {
        "key": item.key,
        "version": list(item.version),
        "author": item.author,
        "signatures": [kid for kid, _ in item.signatures],
        "bytes": len(item.encode()),
        **b.summary(),
    }
    if as_json:
        emit_json(doc)
        return
    click.echo(f"bundle {b.name}  target {b.target or '(every node)'}")
    click.echo(f"version {item.version.stamp}  author {item.author}  {doc['bytes']} bytes")
    for r in b.resources:
        click.echo(f"  {r}")
    for name, size in doc["files"].items():
        click.echo(f"  file {name} ({size} bytes)")
    for name, nodes in doc["secrets"].items():
        click.echo(f"  secret {name} sealed for {', '.join(nodes)}")
