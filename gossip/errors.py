"""The one error tree of grapevine, and the one vocabulary of refusal reasons.

Callers catch what they mean: a decoder raises ``ProtocolError``, a broken
policy file ``PolicyError``, a bad signature or scope ``TrustError``, a bad
setting ``ConfigError``. All of them are ``GrapevineError``, which the
command line turns into exit status 2 with the message.

Every ``GrapevineError`` carries a ``reason``: a member of ``Reason``, the
single enumeration of why something was refused. Metrics labels, log lines,
the local API's error documents (``{"error": reason, "detail": ...}``), run
replies and the command line all print that same word, so an operator can
grep one spelling from a metric to a log line to the CLI. ``Reason`` is a
``StrEnum``: a member *is* its spelling (``Reason.STALE == "Stale"``), so it
travels through JSON, msgpack and Prometheus labels unchanged. A reason
spelled anywhere else is a bug; ``tests/gossip/test_reasons.py`` checks it.

The tree lives in ``gossip/`` because it is the one package every other
package may import; it has no dependencies of its own.
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    """Why something from outside was refused. ONLY ADD: the spellings are a contract
    (metrics labels, logs, API error documents, CLI output, run replies on the wire)."""

    # -- items (policy/trust.py Refusal, admission, gossip ItemRefused) ---------------------
    BAD_SIGNATURE = "BadSignature"  # a signature that does not verify
    UNKNOWN_KEY = "UnknownKey"  # signed by (or naming) a key the trust root does not list
    OUT_OF_SCOPE = "OutOfScope"  # a valid signer acting outside its grant
    STALE = "Stale"  # not newer than what is held (or a run id already used)
    FROM_THE_FUTURE = "FromTheFuture"  # stamped further ahead of the local clock than the allowed skew
    TOO_LARGE = "TooLarge"  # over a size limit of the wire registry
    MALFORMED = "Malformed"  # does not decode or validate
    EXPIRED = "Expired"  # past a deadline or the trust root's expiry
    CONFLICT = "Conflict"  # a bundle claims a resource an earlier bundle holds
    VALIDATOR_ERROR = "ValidatorError"  # the admission check itself failed (a bug, counted not crashed)
    NOT_ACCEPTED = "NotAccepted"  # the core neither accepted nor refused an injected item
    # -- run orders, results, discovery (policy/runorder.py, node/target|origin|discovery) ---
    NOT_TARGETED = "NotTargeted"  # the order's selector does not match this node
    REPLAYED = "Replayed"  # a run or query id this node has already seen
    WRONG_ORIGIN = "WrongOrigin"  # the order names another node as its origin
    UNKNOWN_ORIGIN = "UnknownOrigin"  # the origin's address or node key is not known here
    NOT_SENT_BY_ORIGIN = "NotSentByOrigin"  # an order posted by a node other than its origin
    SENDER_MISMATCH = "SenderMismatch"  # an answer signed by a node other than the one it names
    KEY_MISMATCH = "KeyMismatch"  # an answer's node key differs from the pinned one
    RATE_LIMITED = "RateLimited"  # over a per-sender budget
    UNKNOWN_NODE = "UnknownNode"  # a result from a node the run never targeted
    REFUSED = "Refused"  # a peer refused without saying why
    # -- frames on the peer port (node/netkey.py, node/frames.py, node/transport.py) ----------
    NOT_A_FRAME = "NotAFrame"
    UNSEALED = "Unsealed"
    UNKNOWN_NETWORK_KEY = "UnknownNetworkKey"
    BAD_SEAL = "BadSeal"
    BAD_ENVELOPE = "BadEnvelope"
    BAD_NODE_SIGNATURE = "BadNodeSignature"
    NODE_KEY_CHANGED = "NodeKeyChanged"
    WRONG_DESTINATION = "WrongDestination"
    BAD_ROUTE_BODY = "BadRouteBody"
    BAD_MESSAGE = "BadMessage"
    BAD_BROADCAST = "BadBroadcast"
    STALE_LINK_TOKEN = "StaleLinkToken"
    REPLAYED_LINK_TOKEN = "ReplayedLinkToken"
    NO_LINK_TOKEN = "NoLinkToken"
    TOO_MANY_PINS = "TooManyPins"
    EMPTY = "Empty"
    NO_LENGTH = "NoLength"
    LENGTH_MISMATCH = "LengthMismatch"
    COMPRESSED_BODY = "CompressedBody"
    SLOW_BODY = "SlowBody"
    TRUNCATED = "Truncated"
    UNKNOWN_ROUTE = "UnknownRoute"
    ROUTE_FAILED = "RouteFailed"
    EVICTED = "Evicted"  # an unauthenticated connection closed to make room (node/guard.py)
    # -- the local API (node/api.py, node/runapi.py, node/pins.py) -------------------------------
    BAD_REQUEST = "BadRequest"
    NOT_FOUND = "NotFound"
    NOT_PINNED = "NotPinned"
    KEY_IN_USE = "KeyInUse"
    INTERNAL_ERROR = "InternalError"
    # -- local work ---------------------------------------------------------------------------
    BUSY = "Busy"  # another converge holds the root
    FAILED = "Failed"  # a resource could not be checked or applied

    @classmethod
    def from_text(cls, text: object) -> Reason:
        """A reason another process sent (a peer's reply, an API answer); ``Refused`` if it is not one of ours."""
        try:
            return cls(text)
        except ValueError:
            return cls.REFUSED


class GrapevineError(Exception):
    """Root of every error grapevine raises on purpose; ``reason`` says why, in one word.

    The default is ``Malformed`` (bad input); a refusal passes its own (``reason=...``)
    and it is checked against ``Reason`` here, so a misspelt reason fails at
    once instead of opening a new metrics label.
    """

    reason: Reason = Reason.MALFORMED  # bad input from outside, unless the raiser says more

    def __init__(self, *args: object, reason: Reason | str | None = None) -> None:
        super().__init__(*args)
        if reason is not None:
            self.reason = Reason(reason)


class ProtocolError(GrapevineError):
    """Bytes or a message from outside that do not follow the protocol."""


class PolicyError(GrapevineError):
    """A policy file, bundle body, selector or resource that cannot be used."""


class TrustError(GrapevineError):
    """A signature, key, scope or trust root that does not hold."""


class ConfigError(GrapevineError, ValueError):
    """A setting (or an operator's argument) that is missing, malformed or out of range."""

