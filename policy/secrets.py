"""Per-node secrets: values sealed to one node's key, readable only there.

A policy document may carry::

    secrets:
      db_password:
        keys/web-1.node.pub: "s3cret"     # node public key file -> plaintext
        keys/web-2.node.pub: "other"

When the author packs the bundle, each value is sealed (NaCl ``SealedBox``,
X25519 + XSalsa20-Poly1305 with a fresh ephemeral key) to the X25519 form of
that node's Ed25519 public key, and the bundle keeps only
``{secret name: {node key id: sealed bytes}}``. Any node can relay the bundle;
only the named node can open its value, with its own node key.

Sealing uses a fresh ephemeral key each time, so a bundle with secrets packs
to different bytes on every run (same plaintext never gives the same
ciphertext). Everything else in a bundle packs deterministically.

Opened values are ``SecretValue`` objects whose ``repr`` and ``str`` hide the
value, so a log line or a traceback cannot leak it; call ``reveal()`` at the
one place the value is written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import nacl.exceptions
import nacl.public

from grapevine.gossip.errors import PolicyError, TrustError

from .keys import PublicKey, SigningKey

if TYPE_CHECKING:
    from .bundle import Bundle

MAX_SECRET_BYTES = 64 * 1024  # passwords, tokens, TLS keys; not files
MAX_SECRETS = 256  # per bundle
SEAL_OVERHEAD = 48  # ephemeral public key (32) + Poly1305 tag (16)


class SecretValue:
    """A secret's plaintext, hidden from repr/str/format."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = bytes(value)

    def reveal(self) -> bytes:
        return self._value

    def text(self) -> str:
        return self._value.decode("utf-8")

    def __repr__(self) -> str:
        return "SecretValue(<hidden>)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretValue) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("SecretValue", self._value))

    def __reduce__(self):
        raise TypeError("a SecretValue cannot be pickled")


def seal(value: bytes | str, node: PublicKey) -> bytes:
    """Seal ``value`` so only the holder of ``node``'s private key can open it."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, bytes):
        raise PolicyError("a secret value must be text or bytes")
    if len(value) > MAX_SECRET_BYTES:
        raise PolicyError(f"a secret value is limited to {MAX_SECRET_BYTES} bytes")
    return nacl.public.SealedBox(nacl.public.PublicKey(node.to_curve25519())).encrypt(value)


def open_sealed(sealed: bytes, node_key: SigningKey) -> SecretValue:
    """Open a value sealed to ``node_key``; ``TrustError`` if it was not, or was altered."""
    box = nacl.public.SealedBox(nacl.public.PrivateKey(node_key.to_curve25519()))
    try:
        return SecretValue(box.decrypt(bytes(sealed)))
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise TrustError(f"a sealed value could not be opened with node key {node_key.key_id}") from None


def secrets_for(bundle: Bundle, node_key: SigningKey) -> dict[str, SecretValue]:
    """The bundle's secrets sealed to this node, opened. Secrets for other nodes are skipped."""
    out = {}
    for name, per_node in bundle.secrets.items():
        sealed = per_node.get(node_key.key_id)
        if sealed is not None:
            try:
                out[name] = open_sealed(sealed, node_key)
            except TrustError:
                raise TrustError(f"bundle {bundle.name!r}: secret {name!r} could not be opened by node key {node_key.key_id}") from None
    return out


def seal_document(doc: dict, base_dir: str | os.PathLike, source: str) -> dict:
    """Return ``doc`` with plaintext ``secrets`` sealed to the named node key files.

    Node key file paths are relative to ``base_dir`` (the policy file's folder).
    """
    plain = doc.get("secrets")
    if not plain:
        return doc
    if not isinstance(plain, dict) or len(plain) > MAX_SECRETS:
        raise PolicyError(f"{source}: secrets must be a mapping of at most {MAX_SECRETS} names")
    sealed: dict[str, dict[str, bytes]] = {}
    for name, per_node in plain.items():
        if not isinstance(per_node, dict) or not per_node:
            raise PolicyError(f"{source}: secret {name!r} must map node public key files to values")
        sealed[name] = {}
        for key_file, value in per_node.items():
            path = Path(base_dir) / str(key_file)
            try:
                node = PublicKey.load(path)
            except TrustError as exc:
                raise PolicyError(f"{source}: secret {name!r}: {exc}") from None
            if not isinstance(value, (str, bytes)):
                raise PolicyError(f"{source}: secret {name!r} for {key_file}: the value must be text")
            sealed[name][node.key_id] = seal(value, node)
    return {**doc, "secrets": sealed}
