"""An item that may not be admitted, and the reasons it may carry.

``Refusal`` is raised by every admission check: the trust root's signature
and succession checks (``trust.py``), a publisher's grant (``grants.py``),
admission itself (``admission.py``) and resource claims (``catalog.py``).
It lives in a module of its own so that each of those can raise it without
importing the others.
"""

from __future__ import annotations

from grapevine.gossip.errors import Reason, TrustError

# The admission reasons: the members of the one vocabulary (gossip/errors.py Reason) an item refusal may carry.
BAD_SIGNATURE = Reason.BAD_SIGNATURE
UNKNOWN_KEY = Reason.UNKNOWN_KEY
OUT_OF_SCOPE = Reason.OUT_OF_SCOPE
STALE = Reason.STALE
FROM_THE_FUTURE = Reason.FROM_THE_FUTURE
TOO_LARGE = Reason.TOO_LARGE
MALFORMED = Reason.MALFORMED
EXPIRED = Reason.EXPIRED
CONFLICT = Reason.CONFLICT  # a bundle declares a resource an earlier bundle claims (catalog.resolve_claims)
REASONS = (BAD_SIGNATURE, UNKNOWN_KEY, OUT_OF_SCOPE, STALE, FROM_THE_FUTURE, TOO_LARGE, MALFORMED, EXPIRED, CONFLICT)


class Refusal(TrustError):
    """An item that may not be admitted; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: Reason | str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}", reason=reason)
        assert self.reason in REASONS, reason
        self.detail = detail
