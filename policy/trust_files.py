"""Writing trust roots (the command line's side) and reading and writing ``.gv`` files.

``build_root`` assembles a root from public keys and their roles,
``init_root`` signs a first root, ``rotate`` signs a successor (checked
with the same ``verify_succession`` every node runs), ``add_signature`` adds
one admin's signatures to a candidate. Import these from here; ``trust``
holds what a node needs to check a root.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from grapevine.gossip.errors import GrapevineError, PolicyError, TrustError
from grapevine.gossip.item import SignedItem, Version

from .grants import Grant
from .keys import PublicKey, SigningKey
from .trust import (
    DAY_MS,
    LINK_PREFIX,
    MALFORMED,
    MAX_PROOF,
    MAX_ROOT_BYTES,
    ROOT_KEY,
    Link,
    OperatorScope,
    Refusal,
    TrustRoot,
    _split_signatures,
    check_first_root,
    decode_root_item,
    link_bytes,
    verify_succession,
)


# -- authoring roots (CLI side) ---------------------------------------------------


def _sign(root: TrustRoot, keys: Iterable[SigningKey], version: Version) -> SignedItem:
    item = SignedItem(key=ROOT_KEY, version=version, payload=root.encode())
    for k in keys:
        item = add_signature(item, k)
    return item


def _proof_for(current_item: SignedItem, current: TrustRoot, new_root: TrustRoot) -> tuple[Link, ...]:
    """The current root's proof plus the current root itself, trimmed to fit."""
    _, link_sigs = _split_signatures(current_item)
    links = current.proof + (Link(fields=current.fields_bytes(), version=current_item.version, signatures=tuple(link_sigs)),)
    links = links[-MAX_PROOF:]
    while links and len(new_root.with_proof(links).encode()) > MAX_ROOT_BYTES:
        links = links[1:]  # oldest first out: only nodes that slept longest lose the way back
    return links


def build_root(
    *,
    serial: int,
    now_ms: int,
    expires_days: float,
    admins: Iterable[PublicKey],
    threshold: int,
    publishers: Iterable[tuple[PublicKey, str | Grant]] = (),
    operators: Iterable[tuple[PublicKey, OperatorScope]] = (),
) -> TrustRoot:
    """Assemble a root from public keys and their roles (repeats merge)."""
    keys: dict[str, bytes] = {}
    admin_ids = []
    for pub in admins:
        keys[pub.key_id] = pub.raw
        admin_ids.append(pub.key_id)
    pubs: dict[str, set[str]] = {}
    grants: dict[str, dict[str, Grant]] = {}
    for pub, prefix in publishers:
        grant = prefix if isinstance(prefix, Grant) else Grant(prefix=prefix)
        keys[pub.key_id] = pub.raw
        if grant.prefix in pubs.get(pub.key_id, ()):
            before = grants.get(pub.key_id, {}).get(grant.prefix) or Grant(prefix=grant.prefix)
            if before != grant:
                raise TrustError(f"publisher {pub.key_id}: prefix {grant.prefix!r} is given twice with different clauses")
        pubs.setdefault(pub.key_id, set()).add(grant.prefix)
        if grant.restricted:
            grants.setdefault(pub.key_id, {})[grant.prefix] = grant
    ops: dict[str, list[OperatorScope]] = {}
    for pub, scope in operators:
        keys[pub.key_id] = pub.raw
        ops.setdefault(pub.key_id, []).append(scope)
    if expires_days <= 0:
        raise TrustError("the expiry must be a positive number of days")
    return TrustRoot(
        serial=serial,
        created_ms=now_ms,
        expires_ms=now_ms + int(expires_days * DAY_MS),
        threshold=threshold,
        keys=keys,
        admins=tuple(admin_ids),
        publishers={k: tuple(v) for k, v in pubs.items()},
        operators={k: tuple(v) for k, v in ops.items()},
        grants=grants,
    )


def init_root(root: TrustRoot, signers: Iterable[SigningKey], now_ms: int) -> SignedItem:
    """Sign a first root with one or more of its own admins."""
    signers = list(signers)
    if not signers:
        raise TrustError("a trust root needs at least one signing key")
    for k in signers:
        if k.key_id not in root.admins:
            raise TrustError(f"key {k.key_id} signs the root but is not one of its admins")
    return _sign(root, signers, Version(now_ms, 0, signers[0].key_id))


def rotate(
    current_item: SignedItem, new_root: TrustRoot, signers: Iterable[SigningKey], now_ms: int, partial: bool = False
) -> SignedItem:
    """Sign ``new_root`` as the successor of ``current_item`` with the current admins in ``signers``.

    The result is checked with ``verify_succession`` before it is returned, so
    a rotation that nodes would refuse is refused here with the same reason.
    With ``partial`` fewer signatures than the threshold are allowed: the
    other admins add theirs with ``add_signature``.
    """
    signers = list(signers)
    if not signers:
        raise TrustError("a rotation needs at least one signing key")
    current = decode_root_item(current_item)
    cv = current_item.version
    version = Version(now_ms, 0, signers[0].key_id) if now_ms > cv.wall_ms else Version(cv.wall_ms, cv.counter + 1, signers[0].key_id)
    item = _sign(new_root.with_proof(_proof_for(current_item, current, new_root)), signers, version)
    verify_succession(current, item, now_ms, current_item, require_threshold=not partial)
    return item


def add_signature(candidate: SignedItem, key: SigningKey) -> SignedItem:
    """Add ``key``'s item and link signatures to a root (one admin at a time, on their own machine)."""
    root = decode_root_item(candidate)
    item = candidate.with_signature(key.key_id, key.sign(candidate.signing_bytes()))
    return item.with_signature(LINK_PREFIX + key.key_id, key.sign(link_bytes(candidate.version, root.fields_bytes())))


# -- files ---------------------------------------------------------------------------


def read_item_file(path: str | os.PathLike, what: str = "item") -> SignedItem:
    """Read a packed ``.gv`` file. Only the canonical encoding is accepted, so
    any change to the file's bytes is a different (and refused) file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise PolicyError(f"{what} file {p} does not exist") from None
    except OSError as exc:
        raise PolicyError(f"{what} file {p} cannot be read: {exc.strerror}") from None
    return item_from_file_bytes(data, str(p))


def item_from_file_bytes(data: bytes, source: str = "item") -> SignedItem:
    """Decode the bytes of a ``.gv`` file; anything but the canonical encoding is ``Malformed``."""
    try:
        item = SignedItem.decode(data)
    except GrapevineError as exc:
        raise Refusal(MALFORMED, f"{source}: {exc}") from None
    if item.encode() != data:
        raise Refusal(MALFORMED, f"{source}: not the canonical encoding of an item")
    return item


def write_item_file(path: str | os.PathLike, item: SignedItem) -> None:
    """Write a ``.gv`` file atomically (a reader never sees half a file)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    try:
        tmp.write_bytes(item.encode())
        os.replace(tmp, p)
    except OSError as exc:
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
        raise PolicyError(f"cannot write {p}: {exc.strerror}") from None


def load_root_file(path: str | os.PathLike, pinned: str | None = None) -> tuple[SignedItem, TrustRoot]:
    """Read a first root from a file (optionally pinned by fingerprint)."""
    item = read_item_file(path, "trust root")
    try:
        return item, check_first_root(item, pinned)
    except Refusal as exc:
        raise Refusal(exc.reason, f"{path}: {exc.detail}") from None
