"""``grapevine trust``: create, rotate and verify the trust root.

Key arguments name key files: ``--key`` a private key that signs,
``--admin``, ``--publisher PUB=PREFIX[;paths=GLOB,...][;types=TYPE,...][;target=SELECTOR]``
and ``--operator PUB=SELECTOR[;ACTIONS]`` public key files (``alice.key.pub``).
A publisher given without clauses may publish anything under its prefix;
clauses narrow it (see ``grapevine.policy.grants``). A refusal prints its reason name and
exits 1; a bad argument or file exits 2.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import click

from grapevine.gossip.errors import GrapevineError, TrustError
from grapevine.policy.admission import wall_ms
from grapevine.policy.grants import Grant
from grapevine.policy.keys import PublicKey, SigningKey
from grapevine.policy.trust import (
    DAY_MS,
    DEFAULT_EXPIRY_DAYS,
    KNOWN_ACTIONS,
    LINK_PREFIX,
    OperatorScope,
    Refusal,
    check_first_root,
    decode_root_item,
    fingerprint,
    verify_succession,
)
from grapevine.policy.trust_files import add_signature, build_root, init_root, read_item_file, rotate, write_item_file

from .output import emit_json, fail, json_option


@contextlib.contextmanager
def trust_errors(as_json: bool, **extra) -> Iterator[None]:
    """A ``Refusal`` exits 1 printing its reason name; any other grapevine error exits 2."""
    try:
        yield
    except Refusal as exc:
        if as_json:
            emit_json({"ok": False, "reason": exc.reason, "detail": exc.detail, **extra})
        else:
            click.echo(exc.reason)
        raise fail(f"{exc.reason}: {exc.detail}", 1) from None
    except GrapevineError as exc:
        raise fail(str(exc), 2) from None


def _split(spec: str, option: str) -> tuple[PublicKey, str]:
    path, sep, rest = spec.partition("=")
    if not sep or not path:
        raise TrustError(f"{option} expects PUBKEY_FILE=VALUE, got {spec!r}")
    return PublicKey.load(path), rest


def parse_publisher(spec: str) -> tuple[PublicKey, Grant]:
    """``PUB=PREFIX[;paths=GLOB,GLOB][;types=T,T][;target=SELECTOR]`` (no clause: unrestricted)."""
    pub, rest = _split(spec, "--publisher")
    if not rest.partition(";")[0].strip():
        raise TrustError(f"--publisher {spec!r}: give a bundle name prefix such as web/ (or * for every name)")
    try:
        return pub, Grant.parse(rest)
    except TrustError as exc:
        raise TrustError(f"--publisher {spec!r}: {exc}") from None


def parse_operator(spec: str) -> tuple[PublicKey, OperatorScope]:
    pub, rest = _split(spec, "--operator")
    selector, sep, actions = rest.partition(";")
    acts = tuple(a.strip() for a in actions.split(",") if a.strip()) if sep else KNOWN_ACTIONS
    selector = selector.strip() or None
    if selector is not None:
        try:
            from grapevine.policy.selectors import parse
        except ModuleNotFoundError as exc:
            if exc.name != "grapevine.policy.selectors":
                raise
        else:
            parse(selector)
    return pub, OperatorScope(selector=selector, actions=acts)


def revoked_id(spec: str, current) -> str:
    """A ``--revoke`` value: a public key file, or the id of a key in the current root."""
    if spec in current.keys:
        return spec
    if Path(spec).exists():
        return PublicKey.load(spec).key_id
    raise TrustError(f"--revoke {spec!r} is neither a public key file nor a key id in the current root")


def _describe(item, root) -> dict:
    return {
        "serial": root.serial,
        "fingerprint": fingerprint(item),
        "signed_by": [kid for kid, _ in item.signatures if not kid.startswith(LINK_PREFIX)],
        "version": list(item.version),
        **root.summary(),
    }


@click.group()
def trust() -> None:
    """Create, rotate and verify the trust root."""


_roles = [
    click.option("--admin", "admins", multiple=True, help="Admin public key file (repeatable)."),
    click.option("--threshold", type=int, default=None, help="Admin signatures needed for the next root."),
    click.option(
        "--publisher",
        "publishers",
        multiple=True,
        metavar="PUB=PREFIX[;paths=GLOB,..][;types=T,..][;target=SEL]",
        help="Publisher key and the bundle name prefix it may sign (repeatable; * = every name). Clauses narrow it:"
        " paths (globs for file/directory/symlink paths and link targets; ** crosses directories, * does not),"
        " types (resource types; without it exec, package, user and group are refused), target (a selector ceiling)."
        " No clause: unrestricted.",
    ),
    click.option(
        "--operator",
        "operators",
        multiple=True,
        metavar="PUB=SELECTOR[;ACTIONS]",
        help=f"Operator key, the nodes it may target and its actions (default {','.join(KNOWN_ACTIONS)}).",
    ),
    click.option("--expires", "expires_days", type=float, default=None, help=f"Days until the root expires (default {DEFAULT_EXPIRY_DAYS}, or the current root's validity on rotate)."),
]


def roles(f):
    for opt in reversed(_roles):
        f = opt(f)
    return f


@trust.command("init")
@click.option("--key", "key_paths", multiple=True, required=True, help="Private key of an admin that signs the root (repeatable).")
@roles
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Root file to write (root.gv).")
@json_option
def init(key_paths, admins, threshold, publishers, operators, expires_days, out, as_json) -> None:
    """Create the first trust root."""
    with trust_errors(as_json):
        signers = [SigningKey.load(p) for p in key_paths]
        if not admins:
            raise TrustError("a trust root needs at least one --admin public key file")
        now = wall_ms()
        root = build_root(
            serial=1,
            now_ms=now,
            expires_days=DEFAULT_EXPIRY_DAYS if expires_days is None else expires_days,
            admins=[PublicKey.load(p) for p in admins],
            threshold=1 if threshold is None else threshold,
            publishers=[parse_publisher(s) for s in publishers],
            operators=[parse_operator(s) for s in operators],
        )
        item = init_root(root, signers, now)
        write_item_file(out, item)
    _report(item, root, out, as_json)


def _report(item, root, out, as_json, needed: int | None = None) -> None:
    have = sum(1 for kid, _ in item.signatures if not kid.startswith(LINK_PREFIX))
    if as_json:
        emit_json({"ok": True, "out": out, "signatures_needed": needed, **_describe(item, root)})
        return
    click.echo(f"wrote {out}: serial {root.serial}, {len(root.admins)} admin(s), threshold {root.threshold}")
    click.echo(f"fingerprint {fingerprint(item)}")
    if needed is not None and have < needed:
        click.echo(f"signed by {have} of the {needed} admins required: add more with `grapevine trust sign {out} --key ...`")


@trust.command("rotate")
@click.option("--current", "current_path", required=True, type=click.Path(dir_okay=False), help="The root being replaced.")
@click.option("--key", "key_paths", multiple=True, required=True, help="Private key of a current admin (repeatable, up to the threshold).")
@roles
@click.option("--revoke", "revoked", multiple=True, help="Public key file or key id to drop from every role (repeatable).")
@click.option("--partial", is_flag=True, help="Write the candidate even below the threshold; other admins add theirs with `trust sign`.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="New root file to write.")
@json_option
def rotate_cmd(current_path, key_paths, admins, threshold, publishers, operators, expires_days, revoked, partial, out, as_json) -> None:
    """Sign a new root with a threshold of the current admins.

    Roles not given are carried over from the current root; a role option
    given once replaces that whole role list.
    """
    with trust_errors(as_json):
        current_item = read_item_file(current_path, "trust root")
        current = check_first_root(current_item)
        signers = [SigningKey.load(p) for p in key_paths]
        now = wall_ms()
        gone = {revoked_id(r, current) for r in revoked}
        keep = lambda kid: kid not in gone  # noqa: E731
        pub_of = lambda kid: PublicKey(current.keys[kid])  # noqa: E731
        admin_keys = [PublicKey.load(p) for p in admins] if admins else [pub_of(k) for k in current.admins if keep(k)]
        pubs = (
            [parse_publisher(s) for s in publishers]
            if publishers
            else [(pub_of(k), g) for k in current.publishers if keep(k) for g in current.publisher_grants(k)]
        )
        ops = (
            [parse_operator(s) for s in operators]
            if operators
            else [(pub_of(k), s) for k, ss in current.operators.items() if keep(k) for s in ss]
        )
        admin_keys = [k for k in admin_keys if keep(k.key_id)]
        pubs = [(k, p) for k, p in pubs if keep(k.key_id)]
        ops = [(k, s) for k, s in ops if keep(k.key_id)]
        validity = (current.expires_ms - current.created_ms) / DAY_MS
        root = build_root(
            serial=current.serial + 1,
            now_ms=now,
            expires_days=validity if expires_days is None else expires_days,
            admins=admin_keys,
            threshold=min(current.threshold, len(admin_keys)) if threshold is None else threshold,
            publishers=pubs,
            operators=ops,
        )
        item = rotate(current_item, root, signers, now, partial=partial)
        write_item_file(out, item)
    _report(item, root, out, as_json, needed=current.threshold)


@trust.command("sign", short_help="Add admin signatures to a partial root candidate.")
@click.argument("candidate", type=click.Path(dir_okay=False))
@click.option("--key", "key_paths", multiple=True, required=True, help="Private key of an admin adding a signature (repeatable).")
@click.option("--current", "current_path", default=None, type=click.Path(dir_okay=False), help="The root it replaces: check the signers and report progress.")
@json_option
def sign(candidate, key_paths, current_path, as_json) -> None:
    """Add admin signatures to a root candidate written with `trust rotate --partial`."""
    with trust_errors(as_json):
        item = read_item_file(candidate, "trust root")
        for p in key_paths:
            item = add_signature(item, SigningKey.load(p))
        needed = None
        if current_path is not None:
            current_item = read_item_file(current_path, "trust root")
            current = check_first_root(current_item)
            verify_succession(current, item, wall_ms(), current_item, require_threshold=False)
            needed = current.threshold
        root = decode_root_item(item)
        write_item_file(candidate, item)
    _report(item, root, candidate, as_json, needed=needed)


@trust.command("verify", short_help="Check that a root may replace the current one.")
@click.argument("candidate", type=click.Path(dir_okay=False))
@click.option("--current", "current_path", required=True, type=click.Path(dir_okay=False), help="The root it should replace.")
@json_option
def verify(candidate, current_path, as_json) -> None:
    """Exit 0 if CANDIDATE may replace the current root, else 1 with the reason."""
    with trust_errors(as_json, candidate=candidate):
        current_item = read_item_file(current_path, "trust root")
        current = check_first_root(current_item)
        item = read_item_file(candidate, "trust root")
        new = verify_succession(current, item, wall_ms(), current_item)
    if as_json:
        emit_json({"ok": True, "candidate": candidate, **_describe(item, new)})
    else:
        signed = _describe(item, new)["signed_by"]
        click.echo(f"ok: serial {new.serial} may replace serial {current.serial} (signed by {len(signed)} admin(s))")


@trust.command("show")
@click.argument("path", type=click.Path(dir_okay=False))
@json_option
def show(path, as_json) -> None:
    """Print a root's admins, publishers with their grants, operators and fingerprint."""
    with trust_errors(as_json):
        item = read_item_file(path, "trust root")
        root = decode_root_item(item)
    doc = _describe(item, root)
    if as_json:
        emit_json(doc)
        return
    click.echo(f"serial {root.serial}  threshold {root.threshold}  fingerprint {doc['fingerprint']}")
    click.echo(f"expires_ms {root.expires_ms}  signed by {', '.join(doc['signed_by'])}")
    if doc["proof_serials"]:
        click.echo(f"proof: predecessors {', '.join(map(str, doc['proof_serials']))} (nodes on those serials can catch up)")
    for kid in root.keys:
        line = f"  {kid}  {','.join(root.roles(kid))}"
        if kid in root.publishers:
            line += f"  prefixes {' '.join(root.publishers[kid])}"
        for s in root.operators.get(kid, ()):
            line += f"  [{s.selector or '*'}: {','.join(s.actions)}]"
        click.echo(line)
        for g in root.publisher_grants(kid):
            if not g.restricted:
                click.echo(f"    grant {g.prefix}: unrestricted (any path, type and node)")
            else:
                c = g.clauses()
                click.echo(f"    grant {g.prefix}: paths {c['paths']}; types {c['types']}; target {c['target']}")
