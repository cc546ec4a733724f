"""The trust root: who may sign what, and how the root itself is replaced.

The root is the item ``trust/root``; its payload is the canonical msgpack of
a ``TrustRoot``. It names

- every trusted key (key id -> 32-byte Ed25519 public key);
- the admins and how many of them (``threshold``) must sign the next root;
- publishers and the bundle-name prefixes each may sign (``web/`` covers
  ``web/nginx``; ``*`` covers every name), each prefix optionally narrowed
  by a grant (paths, resource types, a target ceiling: ``grants.py``);
- operators and their scopes: a selector saying which nodes they may target
  and the actions (``run``, ``converge``) they may start there;
- a serial that grows with every replacement, and an expiry.

A new root is accepted only if a threshold of the *current* root's admins
signed it and its serial is higher: keys are rotated and revoked by gossiping
a new root, with no node touched. Nodes get their first root out of band, as
a file or pinned by its fingerprint (SHA-256 of the payload), so the first
root needs no chain back to an older one. It must still vouch for itself:
its signatures by keys it lists must verify, and at least one must be by one
of its own admins (or, for a root whose admins all changed in its rotation,
a threshold of the admins of the last root in its proof).

A candidate successor's signers are checked on its raw bytes before its
payload is decoded (``_signed_by_current_admins``), so a root forged by
someone without an admin key costs a signature lookup, not a decode.

Catching up over several rotations: the mesh keeps only the newest root, so
a node that slept through rotations 2 and 3 sees root 4 while it still runs
on root 1. Each root therefore carries a *proof*: its last few predecessors
(their fields without proof, their version, and "link" signatures that the
admins made over exactly those fields). A node walks the proof from its own
serial upwards, checking each step against the admins of the step before,
and finally checks the new root against the last step. Every step is a
threshold-signed transition from a root the node already trusts, so the
proof adds reach, not trust. Each admin therefore signs a root twice: the
item signature (``kid``) over the whole item, and the link signature
(``link/kid``) over the fields and version alone.

Every refusal is a ``Refusal`` carrying one of the reason names the gossip
layer logs and counts.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

from grapevine.gossip.errors import GrapevineError, ProtocolError, TrustError
import msgpack

from grapevine.gossip.item import MAX_SIGNATURES, SignedItem, Version

from .bundle import canonical, pack_canonical, unpack_bounded
from .grants import Grant
from .keys import KEY_BYTES, PublicKey, key_id
from .refusal import (  # noqa: F401 - defined in refusal.py; admission.py reads the reasons from here too
    BAD_SIGNATURE,
    CONFLICT,
    EXPIRED,
    FROM_THE_FUTURE,
    MALFORMED,
    OUT_OF_SCOPE,
    REASONS,
    STALE,
    TOO_LARGE,
    UNKNOWN_KEY,
    Refusal,
)

ROOT_KEY = "trust/root"
FORMAT = 1  # a root without grant clauses: what every root before grants looked like
FORMAT_GRANTS = 2  # a root with a "grants" map; older readers refuse it rather than ignore the clauses
MAX_ROOT_BYTES = 256 * 1024  # a few hundred keys with scopes; a root is read on every admission
MAX_KEYS = 1_000  # authors and operators of one fleet; bounds decode and lookup work
MAX_PREFIXES = 64  # bundle-name prefixes per publisher
MAX_SCOPES = 64  # operator scopes per key
MAX_ADMINS = MAX_SIGNATURES // 2  # every admin must fit two signatures (item + link) on one root item
MAX_PROOF = 8  # predecessors a root carries: a node may sleep through 8 rotations and still catch up
LINK_PREFIX = "link/"  # signature entries over the root's fields alone (see the module docstring)
LINK_DOMAIN = "grapevine/root-link/1"
DAY_MS = 86_400_000
DEFAULT_EXPIRY_DAYS = 365  # long enough to forget about, short enough that a lost root dies on its own
ALL_NAMES = "*"  # publisher prefix that covers every bundle name
KNOWN_ACTIONS = ("converge", "run")

@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorScope:
    selector: str | None  # which nodes; None means every node
    actions: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.selector is not None and (not isinstance(self.selector, str) or not self.selector.strip()):
            object.__setattr__(self, "selector", None)
        if not isinstance(self.actions, (tuple, list)):
            raise TrustError("operator actions must be a list")
        acts = tuple(sorted(set(self.actions)))
        unknown = [a for a in acts if a not in KNOWN_ACTIONS]
        if not acts or unknown:
            raise TrustError(f"operator actions must be some of {list(KNOWN_ACTIONS)}, got {list(self.actions)}")
        object.__setattr__(self, "actions", acts)

    def to_plain(self) -> dict:
        return {"actions": list(self.actions), "selector": self.selector}


def link_bytes(version: Version, fields: bytes) -> bytes:
    """What a link signature covers: a root's fields (without proof) and its version."""
    return msgpack.packb([LINK_DOMAIN, version.wall_ms, version.counter, version.author, fields], use_bin_type=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class Link:
    """One predecessor in a root's proof."""

    fields: bytes  # canonical encoding of the predecessor root with an empty proof
    version: Version
    signatures: tuple[tuple[str, bytes], ...]  # (admin key id, link signature)
    _root: TrustRoot | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        root = TrustRoot.decode(self.fields)  # ProtocolError/TrustError for a bad link
        if root.proof:
            raise ProtocolError("a proof link must not carry a proof of its own")
        object.__setattr__(self, "_root", root)

    def root(self) -> TrustRoot:
        assert self._root is not None
        return self._root

    def to_plain(self) -> list:
        v = self.version
        return [self.fields, v.wall_ms, v.counter, v.author, [[k, s] for k, s in self.signatures]]

    @classmethod
    def from_plain(cls, obj: object) -> Link:
        if not isinstance(obj, list) or len(obj) != 5:
            raise ProtocolError("a proof link is a list of 5 fields")
        fields, wall, counter, author, sigs = obj
        if not isinstance(fields, bytes) or not isinstance(author, str) or not isinstance(sigs, list):
            raise ProtocolError("a proof link has fields of the wrong type")
        for x in (wall, counter):
            if not isinstance(x, int) or isinstance(x, bool) or x < 0:
                raise ProtocolError("a proof link version is two non-negative integers")
        pairs = []
        for pair in sigs:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], bytes)):
                raise ProtocolError("a proof link signature is a [key id, signature] pair")
            pairs.append((pair[0], pair[1]))
        return cls(fields=fields, version=Version(wall, counter, author), signatures=tuple(pairs))


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustRoot:
    serial: int
    created_ms: int
    expires_ms: int
    threshold: int
    keys: dict[str, bytes]  # key id -> public key
    admins: tuple[str, ...]
    publishers: dict[str, tuple[str, ...]] = field(default_factory=dict)  # key id -> name prefixes
    operators: dict[str, tuple[OperatorScope, ...]] = field(default_factory=dict)
    grants: dict[str, dict[str, Grant]] = field(default_factory=dict)  # key id -> prefix -> clauses (restricted only)
    # predecessors, oldest first; not part of what a root *is*, so not compared
    proof: tuple[Link, ...] = field(default=(), compare=False, repr=False)
    _public: dict[str, PublicKey] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("serial", "created_ms", "expires_ms", "threshold"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v >= 2**63:
                raise TrustError(f"trust root {name} must be a non-negative integer")
        if self.serial < 1:
            raise TrustError("trust root serial starts at 1")
        if self.expires_ms <= self.created_ms:
            raise TrustError("trust root must expire after it was created")
        if not isinstance(self.keys, dict) or len(self.keys) > MAX_KEYS:
            raise TrustError(f"trust root holds at most {MAX_KEYS} keys")
        for kid, raw in self.keys.items():
            if not isinstance(raw, bytes) or len(raw) != KEY_BYTES or key_id(raw) != kid:
                raise TrustError(f"trust root key {kid!r} does not match its public key")
        if not isinstance(self.admins, (tuple, list)) or not all(isinstance(a, str) for a in self.admins):
            raise TrustError("trust root admins must be a list of key ids")
        admins = tuple(sorted(set(self.admins)))
        if not admins or len(admins) > MAX_ADMINS:
            raise TrustError(f"a trust root needs 1..{MAX_ADMINS} admins")
        if not 1 <= self.threshold <= len(admins):
            raise TrustError(f"threshold {self.threshold} must be between 1 and the number of admins ({len(admins)})")
        object.__setattr__(self, "admins", admins)
        pubs = {}
        for kid in sorted(self.publishers):
            if not isinstance(self.publishers[kid], (tuple, list)):
                raise TrustError(f"publisher {kid}: prefixes must be a list")
            prefixes = tuple(sorted(set(self.publishers[kid])))
            if not prefixes or len(prefixes) > MAX_PREFIXES or not all(isinstance(p, str) and p for p in prefixes):
                raise TrustError(f"publisher {kid}: 1..{MAX_PREFIXES} non-empty name prefixes needed")
            pubs[kid] = prefixes
        object.__setattr__(self, "publishers", pubs)
        if not isinstance(self.grants, dict):
            raise TrustError("trust root grants must be a map")
        grants = {}
        for kid in sorted(self.grants):
            by_prefix = self.grants[kid]
            if not isinstance(by_prefix, dict) or not by_prefix:
                raise TrustError(f"publisher {kid}: grants must map prefixes to clauses")
            for prefix, g in by_prefix.items():
                if not isinstance(g, Grant) or g.prefix != prefix or not g.restricted:
                    raise TrustError(f"publisher {kid}: grant for {prefix!r} must be a restricted Grant of that prefix")
                if prefix not in pubs.get(kid, ()):
                    raise TrustError(f"publisher {kid}: grant for {prefix!r}, which is not one of its prefixes")
            grants[kid] = {p: by_prefix[p] for p in sorted(by_prefix)}
        object.__setattr__(self, "grants", grants)
        ops = {}
        for kid in sorted(self.operators):
            scopes = tuple(sorted(set(self.operators[kid]), key=lambda s: (s.selector or "", s.actions)))
            if not scopes or len(scopes) > MAX_SCOPES or not all(isinstance(s, OperatorScope) for s in scopes):
                raise TrustError(f"operator {kid}: 1..{MAX_SCOPES} scopes needed")
            ops[kid] = scopes
        object.__setattr__(self, "operators", ops)
        used = set(admins) | set(pubs) | set(ops)
        missing = sorted(used - set(self.keys))
        if missing:
            raise TrustError(f"trust root names key(s) {missing} without their public keys")
        unused = sorted(set(self.keys) - used)
        if unused:
            raise TrustError(f"trust root lists key(s) {unused} with no role")
        object.__setattr__(self, "keys", {k: self.keys[k] for k in sorted(self.keys)})
        object.__setattr__(self, "_public", {})  # filled on first use: most keys are never looked up
        if not isinstance(self.proof, tuple) or len(self.proof) > MAX_PROOF or not all(isinstance(x, Link) for x in self.proof):
            raise TrustError(f"a trust root proof is at most {MAX_PROOF} links")

    # -- questions asked by admission and runs ---------------------------------

    def public_key(self, kid: str) -> PublicKey | None:
        pub = self._public.get(kid)
        if pub is None:
            raw = self.keys.get(kid)
            if raw is None:
                return None
            pub = self._public[kid] = PublicKey(raw)
        return pub

    def expired(self, now_ms: int) -> bool:
        return now_ms >= self.expires_ms

    def publisher_covers(self, kid: str, bundle_name: str) -> bool:
        return any(p == ALL_NAMES or bundle_name.startswith(p) for p in self.publishers.get(kid, ()))

    def publisher_grants(self, kid: str, bundle_name: str | None = None) -> list[Grant]:
        """The grants of ``kid`` (those covering ``bundle_name`` if given); unrestricted ones included."""
        mine = self.grants.get(kid, {})
        out = [mine.get(p) or Grant(prefix=p) for p in self.publishers.get(kid, ())]
        return [g for g in out if bundle_name is None or g.covers_name(bundle_name)]

    def operator_selectors(self, kid: str, action: str) -> list[str | None]:
        """Selectors within which ``kid`` may start ``action`` (empty: not allowed at all)."""
        return [s.selector for s in self.operators.get(kid, ()) if action in s.actions]

    def roles(self, kid: str) -> list[str]:
        out = []
        if kid in self.admins:
            out.append("admin")
        if kid in self.publishers:
            out.append("publisher")
        if kid in self.operators:
            out.append("operator")
        return out

    # -- bytes -------------------------------------------------------------------

    def to_plain(self) -> dict:
        plain = {
            "format": FORMAT_GRANTS if self.grants else FORMAT,
            "serial": self.serial,
            "created_ms": self.created_ms,
            "expires_ms": self.expires_ms,
            "threshold": self.threshold,
            "keys": dict(self.keys),
            "admins": list(self.admins),
            "publishers": {k: list(v) for k, v in self.publishers.items()},
            "operators": {k: [s.to_plain() for s in v] for k, v in self.operators.items()},
            "proof": [link.to_plain() for link in self.proof],
        }
        if self.grants:
            plain["grants"] = {k: {p: g.to_plain() for p, g in v.items()} for k, v in self.grants.items()}
        return canonical(plain, "trust root")

    def encode(self) -> bytes:
        return pack_canonical(self.to_plain())

    def fields_bytes(self) -> bytes:
        """The encoding of this root without its proof: what link signatures cover."""
        return dataclasses.replace(self, proof=()).encode() if self.proof else self.encode()

    def with_proof(self, proof: tuple[Link, ...]) -> TrustRoot:
        return dataclasses.replace(self, proof=tuple(proof))

    @classmethod
    def decode(cls, data: bytes) -> TrustRoot:
        obj = unpack_bounded(data, MAX_ROOT_BYTES, "trust root")
        fields = {"format", "serial", "created_ms", "expires_ms", "threshold", "keys", "admins", "publishers", "operators", "proof"}
        if isinstance(obj, dict) and obj.get("format") == FORMAT_GRANTS:
            fields.add("grants")
        if not isinstance(obj, dict) or set(obj) != fields:
            raise ProtocolError(f"trust root must be a map with exactly the keys {sorted(fields)}")
        if obj["format"] not in (FORMAT, FORMAT_GRANTS):
            raise ProtocolError(f"trust root format {obj['format']!r} is not supported (this version reads {FORMAT} and {FORMAT_GRANTS})")
        try:
            ops = {
                k: tuple(OperatorScope(selector=s["selector"], actions=tuple(s["actions"])) for s in v)
                for k, v in obj["operators"].items()
            }
            root = cls(
                serial=obj["serial"],
                created_ms=obj["created_ms"],
                expires_ms=obj["expires_ms"],
                threshold=obj["threshold"],
                keys=dict(obj["keys"]),
                admins=tuple(obj["admins"]),
                publishers={k: tuple(v) for k, v in obj["publishers"].items()},
                operators=ops,
                grants={
                    k: {p: Grant.from_plain(p, g) for p, g in v.items()} for k, v in obj.get("grants", {}).items()
                },
                proof=tuple(Link.from_plain(x) for x in obj["proof"]),
            )
        except TrustError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"trust root has a malformed field: {exc}") from None
        if root.encode() != bytes(data):
            raise ProtocolError("trust root is not in canonical form")
        return root

    def summary(self) -> dict:
        return {
            "serial": self.serial,
            "created_ms": self.created_ms,
            "expires_ms": self.expires_ms,
            "threshold": self.threshold,
            "admins": list(self.admins),
            "publishers": {k: list(v) for k, v in self.publishers.items()},
            "grants": {k: {g.prefix: g.clauses() for g in self.publisher_grants(k)} for k in self.publishers},
            "operators": {k: [s.to_plain() for s in v] for k, v in self.operators.items()},
            "proof_serials": [link.root().serial for link in self.proof],
        }


def fingerprint(root_item: SignedItem) -> str:
    """Pin for a first root: SHA-256 (hex) of the root payload."""
    return hashlib.sha256(root_item.payload).hexdigest()


def decode_root_item(item: SignedItem) -> TrustRoot:
    """The root carried by ``item``, or ``Refusal(Malformed|TooLarge)``."""
    if item.key != ROOT_KEY:
        raise Refusal(MALFORMED, f"item {item.key!r} is not {ROOT_KEY!r}")
    if len(item.payload) > MAX_ROOT_BYTES:
        raise Refusal(TOO_LARGE, f"trust root of {len(item.payload)} bytes exceeds {MAX_ROOT_BYTES}")
    try:
        return TrustRoot.decode(item.payload)
    except GrapevineError as exc:
        raise Refusal(MALFORMED, str(exc)) from None


def _distinct_signers(item: SignedItem) -> None:
    ids = [kid for kid, _ in item.signatures]
    if len(ids) != len(set(ids)):
        raise Refusal(MALFORMED, f"item {item.key!r} carries two signatures by the same key")
    if not ids:
        raise Refusal(BAD_SIGNATURE, f"item {item.key!r} carries no signature")


def _split_signatures(item: SignedItem) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """(item signatures, link signatures) of a root item; link ids lose their prefix."""
    plain, links = [], []
    for kid, sig in item.signatures:
        if kid.startswith(LINK_PREFIX):
            links.append((kid[len(LINK_PREFIX):], sig))
        else:
            plain.append((kid, sig))
    return plain, links


def _check_signer_set(
    what: str, pairs: list[tuple[str, bytes]], data: bytes, signers_root: TrustRoot, require_threshold: bool
) -> int:
    for kid, sig in pairs:
        pub = signers_root.public_key(kid)
        if pub is None:
            raise Refusal(UNKNOWN_KEY, f"{what} is signed by key {kid}, which the current root does not know")
        if kid not in signers_root.admins:
            raise Refusal(OUT_OF_SCOPE, f"{what} is signed by {kid}, which is not an admin")
        if not pub.verify(data, sig):
            raise Refusal(BAD_SIGNATURE, f"{what}: the signature by {kid} does not verify")
    n = len(pairs)
    if require_threshold and n < signers_root.threshold:
        raise Refusal(
            OUT_OF_SCOPE, f"{what} carries {n} of the {signers_root.threshold} admin signatures the current root requires"
        )
    return n


def check_link(link: Link, signers_root: TrustRoot) -> TrustRoot:
    """The root in a proof link, if a threshold of ``signers_root``'s admins signed it."""
    try:
        root = link.root()
    except GrapevineError as exc:
        raise Refusal(MALFORMED, f"proof link: {exc}") from None
    ids = [k for k, _ in link.signatures]
    if len(ids) != len(set(ids)):
        raise Refusal(MALFORMED, f"proof link for serial {root.serial} carries two signatures by the same key")
    _check_signer_set(
        f"proof link for serial {root.serial}", list(link.signatures), link_bytes(link.version, link.fields), signers_root, True
    )
    return root


def check_admin_signatures(
    item: SignedItem, signers_root: TrustRoot, require_threshold: bool = True, root: TrustRoot | None = None
) -> int:
    """Every signature must be a valid one by an admin of ``signers_root``; at least its threshold of them.

    Returns the number of valid admin signatures. With ``require_threshold``
    false a shortfall is allowed (a candidate still collecting signatures).
    """
    _distinct_signers(item)
    plain, links = _split_signatures(item)
    n = _check_signer_set(item.key, plain, item.signing_bytes(), signers_root, require_threshold)
    root = decode_root_item(item) if root is None else root
    # the link signatures let nodes further behind catch up later: same signers, same threshold
    _check_signer_set(f"{item.key} (link)", links, link_bytes(item.version, root.fields_bytes()), signers_root, require_threshold)
    return n


def _signed_by_current_admins(current: TrustRoot, candidate: SignedItem, current_item: SignedItem | None) -> None:
    """The cheap gate in front of a candidate's decode: its signatures must lead back to ``current``.

    Either every item signature is by an admin of ``current`` (the usual case:
    no rotation missed) and those verify, or the node is catching up, and
    then some link of the candidate's proof newer than the current root must
    carry a threshold of valid signatures by the current admins. Both are
    checked on the raw bytes (signatures cover bytes, not decoded fields), so
    a root forged by someone who holds no admin key is refused before its
    payload is decoded. The full chain is checked after the decode.
    """
    _distinct_signers(candidate)
    plain, _ = _split_signatures(candidate)
    if not plain:
        raise Refusal(BAD_SIGNATURE, f"{candidate.key} carries no admin signature")
    if all(kid in current.admins for kid, _ in plain):
        _check_signer_set(candidate.key, plain, candidate.signing_bytes(), current, False)
        return
    try:  # a missed rotation: only the proof can connect the signers to the current admins
        obj = unpack_bounded(candidate.payload, MAX_ROOT_BYTES, "trust root")
        raw_links = (obj.get("proof") if isinstance(obj, dict) else None) or []
        if not isinstance(raw_links, list) or len(raw_links) > MAX_PROOF:
            raise ProtocolError(f"a trust root proof is a list of at most {MAX_PROOF} links")
        links = []
        for raw in raw_links:
            if not isinstance(raw, list) or len(raw) != 5 or not isinstance(raw[0], bytes):
                raise ProtocolError("a proof link is a list of 5 fields")
            links.append(raw)
    except GrapevineError as exc:
        raise Refusal(MALFORMED, f"{candidate.key}: {exc}") from None
    mine = current.fields_bytes()
    forged = False  # a link naming a current admin whose signature does not verify
    for fields, wall, counter, author, sigs in links:
        if fields == mine or not isinstance(sigs, list):
            continue  # the current root itself (its link signatures are public): no step forward
        try:
            version = Version(wall, counter, author)
        except (TypeError, ValueError, GrapevineError):
            continue
        if current_item is not None and version <= current_item.version:
            continue
        data = link_bytes(version, fields)
        valid = set()
        for pair in sigs:
            if isinstance(pair, list) and len(pair) == 2 and pair[0] in current.admins and isinstance(pair[1], bytes):
                pub = current.public_key(pair[0])
                if pub is not None and pub.verify(data, pair[1]):
                    valid.add(pair[0])
                else:
                    forged = True
        if len(valid) >= current.threshold:
            return
    outsiders = sorted(kid for kid, _ in plain if kid not in current.admins)
    if forged:
        raise Refusal(BAD_SIGNATURE, f"{candidate.key}: a proof link's signature by a current admin does not verify")
    raise Refusal(
        UNKNOWN_KEY if any(current.public_key(k) is None for k in outsiders) else OUT_OF_SCOPE,
        f"{candidate.key} is signed by {outsiders}, not admins of the current root (serial {current.serial}),"
        " and no link of its proof is signed by a threshold of the current admins",
    )


def verify_succession(
    current: TrustRoot,
    candidate: SignedItem,
    now_ms: int,
    current_item: SignedItem | None = None,
    require_threshold: bool = True,
) -> TrustRoot:
    """Return the new root if ``candidate`` may replace ``current``; else raise ``Refusal``.

    An expired current root may still be replaced by its admins: that is how a
    fleet recovers from a root nobody renewed in time. ``require_threshold``
    false checks everything except the number of signatures (used while
    admins add their signatures one by one).
    """
    if len(candidate.payload) > MAX_ROOT_BYTES:
        raise Refusal(TOO_LARGE, f"trust root of {len(candidate.payload)} bytes exceeds {MAX_ROOT_BYTES}")
    if current_item is not None and candidate.version <= current_item.version:
        raise Refusal(STALE, f"trust root version {tuple(candidate.version)} is not newer than {tuple(current_item.version)}")
    _signed_by_current_admins(current, candidate, current_item)  # before the payload is decoded
    new = decode_root_item(candidate)
    if new.serial <= current.serial:
        raise Refusal(STALE, f"trust root serial {new.serial} does not replace serial {current.serial}")
    signers = current
    for link in new.proof:  # catch up over rotations this node has not seen
        step = check_link(link, signers) if link.root().serial > signers.serial else None
        if step is not None:
            if step.serial >= new.serial:
                raise Refusal(MALFORMED, f"trust root serial {new.serial} lists serial {step.serial} in its proof")
            signers = step
    check_admin_signatures(candidate, signers, require_threshold, new)
    if new.expired(now_ms):
        raise Refusal(EXPIRED, f"the new trust root (serial {new.serial}) has already expired")
    return new


def check_first_root(item: SignedItem, pinned: str | None = None) -> TrustRoot:
    """Accept a root given out of band. The fingerprint must match if pinned;
    every signature by a key the root lists must verify; and the root must be
    vouched for by its own chain: at least one valid item signature by one of
    its own admins, or (a root whose admins all changed in its rotation) a
    threshold of the admins of the last root in its proof."""
    if len(item.payload) > MAX_ROOT_BYTES:
        raise Refusal(TOO_LARGE, f"trust root of {len(item.payload)} bytes exceeds {MAX_ROOT_BYTES}")
    if pinned is not None and fingerprint(item) != pinned.strip().lower():
        raise Refusal(BAD_SIGNATURE, f"trust root fingerprint {fingerprint(item)} does not match the pinned {pinned}")
    _distinct_signers(item)
    plain, links = _split_signatures(item)
    if not plain:
        raise Refusal(BAD_SIGNATURE, f"{item.key} carries no item signature")
    root = decode_root_item(item)
    data, link_data = item.signing_bytes(), link_bytes(item.version, root.fields_bytes())
    for pairs, signed in ((plain, data), (links, link_data)):
        for kid, sig in pairs:
            pub = root.public_key(kid)
            if pub is not None and not pub.verify(signed, sig):
                raise Refusal(BAD_SIGNATURE, f"trust root: the signature by {kid} does not verify")
    if any(kid in root.admins for kid, _ in plain):
        return root  # each listed signer verified above
    if root.proof:
        check_admin_signatures(item, root.proof[-1].root(), True, root)
        return root
    raise Refusal(
        BAD_SIGNATURE, f"trust root serial {root.serial} carries no valid signature by any of its admins {list(root.admins)}"
    )


# Writing roots and reading/writing .gv files live in trust_files.py; import them from there.
# Two callers still read these through this module (node/agent.py, policy/admission.py); this
# lookup, and the trust -> trust_files entry in pyproject.toml's ignore_imports, go when they move.
