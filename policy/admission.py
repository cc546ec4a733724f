"""Admission: the validator the gossip core asks before it stores an item.

An item is admitted only if

- it is within the size limit of its namespace (``TooLarge``) and decodes to
  what its key says it is (``Malformed``);
- its version is newer than the stored one (``Stale``) and its stamp is not
  more than the allowed clock skew ahead of now (``FromTheFuture``);
- for ``bundle/<name>``: the current root has not expired (``Expired``), the
  author is a key the root knows (``UnknownKey``), the one signature is the
  author's and verifies (``BadSignature``), the author is a publisher
  whose prefixes cover the name, and the bundle stays within that prefix's
  grant: paths, resource types, target ceiling (``OutOfScope``, see
  ``grants.py``);
- for ``rollout/<name>`` (a staged rollout's record, ``rollout.py``): the
  same root, key and signature checks as a bundle by a publisher covering
  ``<name>``, a record that decodes (``Malformed``) and that does not move the
  rollout of one bundle version backwards: a halted, rolled back or complete
  rollout stays so, an opened stage stays open (``Stale``);
- a bundle's rollout plan with a health command needs a grant that allows
  ``exec`` (the command runs on every node, like an ``exec`` resource);
- for ``trust/root``: a threshold of the current root's admins signed it, or
  of the admins of a predecessor reached through its proof, and its serial is
  higher (see ``trust.verify_succession``). A node with no root yet
  (``Admission.from_fingerprint``) admits only the root it was pinned to.

Cheap checks come first, so a flood of stale or oversized items costs no
signature verification. Each refusal is logged on ``grapevine.policy`` with
its reason and counted in ``refusals``; stored state is never touched here.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping

from grapevine.gossip.errors import GrapevineError, TrustError
from grapevine.gossip.item import SignedItem
from grapevine.gossip.wire import MAX_ROLLOUT_RECORD_BYTES

from .bundle import BUNDLE_KEY_PREFIX, MAX_BUNDLE_BYTES, Bundle
from .rollout import ROLLOUT_KEY_PREFIX, RolloutRecord
from . import selectors
from .grants import check_bundle, violation
from .trust import (
    BAD_SIGNATURE,
    EXPIRED,
    FROM_THE_FUTURE,
    MALFORMED,
    MAX_ROOT_BYTES,
    OUT_OF_SCOPE,
    REASONS,
    ROOT_KEY,
    STALE,
    TOO_LARGE,
    UNKNOWN_KEY,
    Refusal,
    TrustRoot,
    check_first_root,
    verify_succession,
)

log = logging.getLogger("grapevine.policy")

DEFAULT_MAX_SKEW_MS = 60_000  # one bad clock cannot freeze a key for more than a minute ahead

__all__ = ["Admission", "Refusal", "REASONS", "DEFAULT_MAX_SKEW_MS", "verify_bundle_file", "wall_ms"]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    max_skew_ms: int = DEFAULT_MAX_SKEW_MS
    max_bundle_bytes: int = MAX_BUNDLE_BYTES  # bundle payloads; pack refuses anything larger too
    max_root_bytes: int = MAX_ROOT_BYTES  # trust root payloads


class Admission:
    """Validator for the gossip core: ``admission(item, current, now_ms) -> reason | None``."""

    def __init__(
        self,
        root_item: SignedItem | None,
        *,
        pinned: str | None = None,
        limits: Limits = Limits(),
        node: str = "",
    ) -> None:
        if root_item is None and pinned is None:
            raise TrustError("admission needs a first trust root: a root item or its pinned fingerprint")
        self.root: TrustRoot | None = check_first_root(root_item, pinned) if root_item is not None else None
        self.root_item = root_item
        self.pinned = pinned
        self.limits = limits
        self.node = node
        self.refusals: Counter[str] = Counter()
        self.last_refusal: Refusal | None = None  # the most recent refusal, with its detail
        self._last_refused: SignedItem | None = None  # ... and the item it refused

    @classmethod
    def from_fingerprint(cls, pinned: str, **kwargs) -> Admission:
        """An admission with no root yet: it admits only the ``trust/root`` whose
        fingerprint is ``pinned`` (as gossiped by any peer), then works as usual."""
        return cls(None, pinned=pinned, **kwargs)

    # -- the validator ---------------------------------------------------------------

    def __call__(self, item: SignedItem, current: SignedItem | None, now_ms: int) -> str | None:
        try:
            self.check(item, current, now_ms)
        except Refusal as exc:
            self.refusals[exc.reason] += 1
            self.last_refusal, self._last_refused = exc, item
            log.info("%srefused %s %s: %s", f"[{self.node}] " if self.node else "", item.key, exc.reason, exc.detail)
            return exc.reason
        return None

    def check(self, item: SignedItem, current: SignedItem | None, now_ms: int) -> Bundle | TrustRoot | RolloutRecord:
        """Raise ``Refusal`` unless ``item`` may be admitted; return what it carries."""
        if item.key == ROOT_KEY:
            return self._check_root(item, current, now_ms)
        if item.key.startswith(BUNDLE_KEY_PREFIX):
            return self._check_bundle(item, current, now_ms)
        if item.key.startswith(ROLLOUT_KEY_PREFIX):
            return self._check_rollout(item, current, now_ms)
        raise Refusal(OUT_OF_SCOPE, f"no rule admits items under {item.key!r}")

    def _check_timing(self, item: SignedItem, current: SignedItem | None, now_ms: int) -> None:
        # the store's order (gossip/store.py is_newer): a newer version wins, and of two items with one
        # version the greater digest does, so every node keeps the same one of a same-version pair
        if current is not None and (item.version < current.version or
                                    (item.version == current.version and item.digest() <= current.digest())):
            raise Refusal(STALE, f"version {item.version} is not newer than the stored {current.version}")
        if item.version.wall_ms > now_ms + self.limits.max_skew_ms:
            ahead = item.version.wall_ms - now_ms
            raise Refusal(FROM_THE_FUTURE, f"stamp is {ahead} ms ahead of this clock (allowed {self.limits.max_skew_ms})")

    def _check_root(self, item: SignedItem, current: SignedItem | None, now_ms: int) -> TrustRoot:
        if len(item.payload) > self.limits.max_root_bytes:
            raise Refusal(TOO_LARGE, f"trust root of {len(item.payload)} bytes exceeds {self.limits.max_root_bytes}")
        if self.root is None:
            root = check_first_root(item, self.pinned)  # only the pinned root; anything else is refused
            if root.expired(now_ms):
                raise Refusal(EXPIRED, f"the pinned trust root (serial {root.serial}) has expired")
            return root
        if item == self.root_item:
            return self.root  # the root this node already runs on (e.g. first seen from a peer)
        self._check_timing(item, current, now_ms)
        return verify_succession(self.root, item, now_ms, self.root_item)

    def _check_bundle(self, item: SignedItem, current: SignedItem | None, now_ms: int) -> Bundle:
        if len(item.payload) > self.limits.max_bundle_bytes:
            raise Refusal(TOO_LARGE, f"bundle of {len(item.payload)} bytes exceeds {self.limits.max_bundle_bytes}")
        self._check_timing(item, current, now_ms)
        return self._check_bundle_trust(item, now_ms)

    def _check_rollout(self, item: SignedItem, current: SignedItem | None, now_ms: int) -> RolloutRecord:
        if len(item.payload) > MAX_ROLLOUT_RECORD_BYTES:
            raise Refusal(TOO_LARGE, f"rollout record of {len(item.payload)} bytes exceeds {MAX_ROLLOUT_RECORD_BYTES}")
        self._check_timing(item, current, now_ms)
        record = self._check_rollout_trust(item, now_ms)
        if current is not None:
            try:
                held = RolloutRecord.decode(current.payload)
            except GrapevineError:
                held = None
            why = None if held is None else record.may_follow(held)
            if why is not None:
                raise Refusal(STALE, f"{item.key}: {why}")
        return record

    def _check_rollout_trust(self, item: SignedItem, now_ms: int) -> RolloutRecord:
        name = item.key[len(ROLLOUT_KEY_PREFIX):]
        self._check_signer(item, name, now_ms)
        try:
            record = RolloutRecord.decode(item.payload)
        except GrapevineError as exc:
            raise Refusal(MALFORMED, f"{item.key}: {exc}") from None
        if record.bundle != name:
            raise Refusal(MALFORMED, f"{item.key} carries the rollout of {record.bundle!r}")
        return record

    def _check_signer(self, item: SignedItem, name: str, now_ms: int) -> None:
        """Root present and current, author known, one verifying signature, a publisher of ``name``."""
        root = self.root
        if root is None:
            raise Refusal(UNKNOWN_KEY, f"{item.key}: no trust root yet (waiting for the pinned root)")
        if root.expired(now_ms):
            raise Refusal(EXPIRED, f"the trust root (serial {root.serial}) expired; no bundle is admitted until it is replaced")
        author = item.version.author
        pub = root.public_key(author)
        if pub is None:
            raise Refusal(UNKNOWN_KEY, f"{item.key} is authored by key {author}, which the trust root does not know")
        if len(item.signatures) != 1 or item.signatures[0][0] != author:
            raise Refusal(BAD_SIGNATURE, f"{item.key} must carry exactly one signature, by its author {author}")
        if not pub.verify(item.signing_bytes(), item.signatures[0][1]):
            raise Refusal(BAD_SIGNATURE, f"{item.key}: the signature by {author} does not verify")
        if not root.publisher_covers(author, name):
            scope = list(root.publishers.get(author, ())) or "none"
            raise Refusal(OUT_OF_SCOPE, f"key {author} may not publish {name!r} (its prefixes: {scope})")

    def _check_bundle_trust(self, item: SignedItem, now_ms: int) -> Bundle:
        name = item.key[len(BUNDLE_KEY_PREFIX):]
        self._check_signer(item, name, now_ms)
        root, author = self.root, item.version.author
        try:
            bundle = Bundle.decode(item.payload)
        except GrapevineError as exc:
            raise Refusal(MALFORMED, f"{item.key}: {exc}") from None
        if bundle.item_key != item.key:
            raise Refusal(MALFORMED, f"{item.key} carries the bundle {bundle.name!r}")
        grants = root.publisher_grants(author, name)
        check_bundle(grants, author, bundle)  # paths, types, target ceiling
        if bundle.rollout is not None and bundle.rollout.health is not None and grants and not any(
                "exec" in g.allowed_types for g in grants):
            raise Refusal(OUT_OF_SCOPE, f"bundle {name!r} by {author}: its rollout health command runs a program,"
                                        " which needs a grant with the exec type")
        return bundle

    def refusal_detail(self, item: SignedItem, reason: str) -> str | None:
        """What the last refusal of ``item`` said (which key, resource or grant), if it was for ``reason``."""
        last = self.last_refusal
        if last is None or self._last_refused is not item or last.reason != reason:
            return None
        return last.detail

    # -- after the store accepted ----------------------------------------------------

    def on_accepted(self, item: SignedItem) -> None:
        """Install a newly accepted ``trust/root``; other items need nothing here."""
        if item.key != ROOT_KEY or item == self.root_item:
            return
        new = TrustRoot.decode(item.payload)
        if self.root is None:
            log.info("%strust root serial %d installed (pinned)", f"[{self.node}] " if self.node else "", new.serial)
            self.root, self.root_item = new, item
            return
        if new.serial <= self.root.serial:
            return
        log.info(
            "%strust root serial %d replaces serial %d",
            f"[{self.node}] " if self.node else "",
            new.serial,
            self.root.serial,
        )
        self.root, self.root_item = new, item

    def still_valid(self, item: SignedItem, now_ms: int) -> str | None:
        """Re-check a stored item against the current root (after a rotation):
        the refusal reason, or None if the item is still trusted."""
        if item.key == ROOT_KEY:
            return None
        try:
            if item.key.startswith(ROLLOUT_KEY_PREFIX):
                self._check_rollout_trust(item, now_ms)
            else:
                self._check_bundle_trust(item, now_ms)
        except Refusal as exc:
            return exc.reason
        return None

    def within_ceiling(self, item: SignedItem, bundle: Bundle, facts: Mapping[str, Any]) -> bool:
        """At apply time: does this node match the target ceiling of a grant that covers ``bundle``?

        Admission already refused any bundle whose target does not provably stay
        inside its grant's ceiling; this is the same rule checked against the
        node's own facts, so a node outside the ceiling never applies the bundle.
        For a bundle the current root admits (convergence asks about no other):
        the usual answers cost a selector match, not a second scope check.
        """
        root = self.root
        if root is None:
            return False
        grants = root.publisher_grants(item.version.author, bundle.name)
        inside = [g for g in grants if g.target is None or selectors.matches(g.target, facts)]
        if len(inside) == len(grants):
            return bool(grants)  # the node is inside every ceiling, and one of these grants admits the bundle
        return any(violation(g, bundle) is None for g in inside)

    # -- for the command line ------------------------------------------------------

    def verify_bundle_item(self, item: SignedItem, now_ms: int | None = None) -> Bundle:
        """The bundle in ``item`` if it may be admitted now; else ``Refusal`` (a TrustError with ``.reason``)."""
        now = wall_ms() if now_ms is None else now_ms
        if not item.key.startswith(BUNDLE_KEY_PREFIX):
            raise Refusal(MALFORMED, f"{item.key!r} is not a bundle item")
        result = self.check(item, None, now)
        assert isinstance(result, Bundle)
        return result


def verify_bundle_file(bundle_path: str, root_path: str, now_ms: int | None = None, pinned: str | None = None) -> Bundle:
    """Verify a packed ``.gv`` bundle file against a trust root file; ``Refusal`` names the reason."""
    from .trust_files import load_root_file, read_item_file

    root_item, _ = load_root_file(root_path, pinned)
    item = read_item_file(bundle_path, "bundle")
    try:
        return Admission(root_item).verify_bundle_item(item, now_ms)
    except Refusal as exc:
        raise Refusal(exc.reason, f"{bundle_path}: {exc.detail}") from None
