"""Ed25519 keys: author keys sign items and run orders, node keys sign results.

A key is named by a short id: the first 16 hex characters (8 bytes) of the
BLAKE2b hash of its 32-byte public key. Ids are what items, trust roots and
signatures refer to; the public key itself lives in the trust root.

Key files are small text files so an operator can tell them apart at a
glance::

    grapevine-ed25519-private-key v1      (alice.key, mode 0600)
    <64 hex characters: the 32-byte seed>

    grapevine-ed25519-public-key v1       (alice.key.pub)
    <64 hex characters: the 32-byte public key>
    <the key id, for humans; ignored when read>

A private key file readable by group or others is refused: a key anyone on
the machine could copy cannot be trusted to speak for its owner. Every
refusal names the file and says what is wrong with it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import nacl.exceptions
import nacl.signing

from grapevine.gossip import wire
from grapevine.gossip.errors import TrustError

PRIVATE_HEADER = "grapevine-ed25519-private-key v1"
PUBLIC_HEADER = "grapevine-ed25519-public-key v1"
KEY_ID_BYTES = 8  # 16 hex chars: 2^64 ids, collisions need ~2^32 keys, far beyond any fleet's authors
KEY_BYTES = 32  # Ed25519 seed and public key length
SIGNATURE_BYTES = wire.SIGNATURE_BYTES  # Ed25519 signature length, as the wire registry declares it
MAX_KEY_FILE_BYTES = 4096  # a key file is ~100 bytes; anything big is not a key file
PRIVATE_FILE_MODE = 0o600


def key_id(verify_key_bytes: bytes) -> str:
    """Short id of a public key: 16 hex chars of its BLAKE2b hash."""
    return hashlib.blake2b(bytes(verify_key_bytes), digest_size=KEY_ID_BYTES).hexdigest()


def _read_key_file(path: Path, want: str) -> tuple[str, bytes]:
    """Read a key file and return (header, key bytes); refuse with the path named."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise TrustError(f"{want} key file {path} does not exist") from None
    except OSError as exc:
        raise TrustError(f"{want} key file {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise TrustError(f"{want} key file {path} is not a regular file")
    if st.st_size > MAX_KEY_FILE_BYTES:
        raise TrustError(f"{path} is {st.st_size} bytes: too big to be a {want} key file")
    try:
        text = path.read_text(encoding="ascii")
    except PermissionError:
        raise TrustError(f"{want} key file {path} is not readable by this user") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TrustError(f"{path} is not a grapevine key file: {exc}") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2 or lines[0] not in (PRIVATE_HEADER, PUBLIC_HEADER):
        raise TrustError(f"{path} is not a grapevine key file (expected a first line {PRIVATE_HEADER!r} or {PUBLIC_HEADER!r})")
    try:
        raw = bytes.fromhex(lines[1])
    except ValueError:
        raise TrustError(f"{path}: the key line is not hexadecimal") from None
    if len(raw) != KEY_BYTES:
        raise TrustError(f"{path}: the key is {len(raw)} bytes, expected {KEY_BYTES}")
    return lines[0], raw


class PublicKey:
    """An Ed25519 public key that verifies signatures."""

    __slots__ = ("_vk", "_raw", "key_id")

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != KEY_BYTES:
            raise TrustError(f"a public key is {KEY_BYTES} bytes")
        self._raw = bytes(raw)
        try:
            self._vk = nacl.signing.VerifyKey(self._raw)
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
            raise TrustError(f"not a valid Ed25519 public key: {exc}") from None
        self.key_id = key_id(self._raw)

    @classmethod
    def from_bytes(cls, raw: bytes) -> PublicKey:
        return cls(raw)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PublicKey:
        p = Path(path)
        header, raw = _read_key_file(p, "public")
        if header == PRIVATE_HEADER:
            raise TrustError(f"{p} is a private key file; pass the public key ({p}.pub) here")
        return cls(raw)

    def __bytes__(self) -> bytes:
        return self._raw

    @property
    def raw(self) -> bytes:
        return self._raw

    def verify(self, data: bytes, signature: bytes) -> bool:
        """True iff ``signature`` is this key's Ed25519 signature over ``data``."""
        if not isinstance(signature, (bytes, bytearray)) or len(signature) != SIGNATURE_BYTES:
            return False
        try:
            self._vk.verify(bytes(data), bytes(signature))
        except nacl.exceptions.BadSignatureError:
            return False
        return True

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(f"{PUBLIC_HEADER}\n{self._raw.hex()}\n{self.key_id}\n", encoding="ascii")

    def to_curve25519(self) -> bytes:
        """The X25519 public key derived from this Ed25519 key (for sealed boxes)."""
        return bytes(self._vk.to_curve25519_public_key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"PublicKey({self.key_id})"


class SigningKey:
    """An Ed25519 private key. Its repr never shows the secret."""

    __slots__ = ("_sk", "public", "key_id")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, (bytes, bytearray)) or len(seed) != KEY_BYTES:
            raise TrustError(f"a private key seed is {KEY_BYTES} bytes")
        self._sk = nacl.signing.SigningKey(bytes(seed))
        self.public = PublicKey(bytes(self._sk.verify_key))
        self.key_id = self.public.key_id

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> SigningKey:
        p = Path(path)
        header, raw = _read_key_file(p, "private")
        if header == PUBLIC_HEADER:
            raise TrustError(f"{p} is a public key file; a private key is needed here (e.g. {p.with_suffix('')})"
                             if p.suffix == ".pub" else f"{p} is a public key file; a private key is needed here")
        mode = stat.S_IMODE(p.stat().st_mode)
        if mode & 0o077:
            raise TrustError(
                f"private key file {p} has mode {mode:04o}: it must not be readable by group or others (chmod 600 {p})"
            )
        return cls(raw)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the private key (mode 0600, never overwriting) and ``<path>.pub``."""
        p = Path(path)
        pub = Path(str(p) + ".pub")
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        except FileExistsError:
            raise TrustError(f"{p} already exists; refusing to overwrite a key file") from None
        except OSError as exc:
            raise TrustError(f"cannot create key file {p}: {exc.strerror}") from None
        try:
            os.fchmod(fd, PRIVATE_FILE_MODE)  # the umask may have narrowed it; make it exact
            os.write(fd, f"{PRIVATE_HEADER}\n{bytes(self._sk).hex()}\n".encode("ascii"))
        finally:
            os.close(fd)
        self.public.save(pub)
        return pub

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature over ``data``."""
        return self._sk.sign(bytes(data)).signature

    def to_curve25519(self) -> bytes:
        """The X25519 private key derived from this key (to open sealed boxes)."""
        return bytes(self._sk.to_curve25519_private_key())

    def __repr__(self) -> str:
        return f"SigningKey({self.key_id})"
