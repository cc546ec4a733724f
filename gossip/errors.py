"""The one error tree of grapevine.

Callers catch what they mean: a decoder raises ``ProtocolError``, a broken
policy file ``PolicyError``, a bad signature or scope ``TrustError``, a bad
setting ``ConfigError``. All of them are ``GrapevineError``, which the
command line turns into exit status 2 with the message.

The tree lives in ``gossip/`` because it is the one package every other
package may import; it has no dependencies of its own.
"""

from __future__ import annotations


class GrapevineError(Exception):
    """Root of every error grapevine raises on purpose."""


class ProtocolError(GrapevineError):
    """Bytes or a message from outside that do not follow the protocol."""


class PolicyError(GrapevineError):
    """A policy file, bundle body, selector or resource that cannot be used."""


class TrustError(GrapevineError):
    """A signature, key, scope or trust root that does not hold."""


class ConfigError(GrapevineError, ValueError):
    """A setting that is missing, malformed or out of range."""
