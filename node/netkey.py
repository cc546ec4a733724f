"""Fleet network keys: sealing every peer frame with a NaCl secret box.

A sealed frame is a fixed-size *header* followed by the body::

    MAGIC (2) | key id (4) | nonce (24) | box(body length, u32)   -- FRAME_HEADER_BYTES = 50
    box(body)                                                      -- body length + 16

The key id (the first 4 bytes of a BLAKE2b hash of the key) tells the
receiver which installed key opens the frame without trying them all. The
header is a secret box of its own, so a receiver reads 50 bytes, learns that
the sender holds the fleet key and how long the body is, and only then reads
the body: nothing beyond the header is read from a stranger. The body's nonce
is the header's with one bit flipped, so a body cannot be moved under
another frame's header.

A ``KeyRing`` holds several keys at once and uses one, the primary, to send:
rotation is install the new key everywhere, make it primary everywhere,
remove the old one, with no restart and no moment where two nodes cannot
talk. A node with no key at all sends and accepts plain frames (``MAGIC_PLAIN``,
the same 50-byte header carrying the length in clear) and logs that its
traffic is not encrypted; a node with keys refuses them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.secret
import nacl.utils

from grapevine.gossip import wire
from grapevine.gossip.errors import ConfigError, ProtocolError, Reason

MAGIC_SEALED = b"G\x02"  # 2: header and body sealed apart (1 sealed the frame in one box)
MAGIC_PLAIN = b"G\x00"
KEY_ID_BYTES = 4  # a fleet holds a handful of keys at once; 32 bits never collide in practice
KEY_BYTES = nacl.secret.SecretBox.KEY_SIZE  # 32
_NONCE = nacl.secret.SecretBox.NONCE_SIZE  # 24
_MAC = nacl.secret.SecretBox.MACBYTES  # 16
_LEN = struct.Struct(">I")  # the body length in the header: frames stay far below 4 GiB
KEY_PREFIX_BYTES = 2 + KEY_ID_BYTES  # magic and key id, in clear
FRAME_HEADER_BYTES = KEY_PREFIX_BYTES + _NONCE + _LEN.size + _MAC  # 50: all a stranger gets us to read
SEAL_OVERHEAD = FRAME_HEADER_BYTES + _MAC  # header plus the body's MAC
# The frame limits (gossip/wire.py) are computed from these two; they must not drift apart.
assert (FRAME_HEADER_BYTES, SEAL_OVERHEAD) == (wire.SEAL_HEADER_BYTES, wire.SEAL_OVERHEAD_BYTES), "see gossip/wire.py"
FILE_PREFIX = "grapevine-netkey-v1:"  # so a netkey file is never mistaken for a signing key


class BadSeal(ProtocolError):
    """A frame that is not sealed with any installed key (or is not a frame)."""

    def __init__(self, reason: Reason | str, detail: str) -> None:
        super().__init__(detail, reason=reason)


def key_id(key: bytes) -> str:
    return hashlib.blake2b(key, digest_size=KEY_ID_BYTES, person=b"gv-netkey").hexdigest()


def generate_key() -> bytes:
    return nacl.utils.random(KEY_BYTES)


def encode_key_file(key: bytes) -> str:
    return FILE_PREFIX + base64.b64encode(key).decode("ascii") + "\n"


def decode_key_text(text: str, source: str) -> bytes:
    text = text.strip()
    if not text.startswith(FILE_PREFIX):
        raise ConfigError(f"{source}: not a grapevine network key (expected a line starting with {FILE_PREFIX!r})")
    try:
        key = base64.b64decode(text[len(FILE_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{source}: network key is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{source}: network key must be {KEY_BYTES} bytes, got {len(key)}")
    return key


def write_key_file(path: Path, key: bytes) -> None:
    """Write a key file readable by its owner only; refuses to overwrite."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise ConfigError(f"{path} cannot be written: {exc.strerror}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(encode_key_file(key))


def read_key_file(path: Path) -> bytes:
    path = Path(path)
    try:
        st = path.stat()
        text = path.read_text("ascii")
    except FileNotFoundError:
        raise ConfigError(f"network key file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"network key file {path} cannot be read: {exc}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"network key file {path} is readable by group or others; chmod 600 it")
    return decode_key_text(text, f"network key file {path}")


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyInfo:
    key_id: str
    primary: bool


class KeyRing:
    """Installed fleet keys; one primary seals, any installed key opens."""

    def __init__(self) -> None:
        self._boxes: dict[bytes, nacl.secret.SecretBox] = {}
        self._keys: dict[str, bytes] = {}
        self._primary: str | None = None

    # -- management -----------------------------------------------------
    def install(self, key: bytes) -> str:
        if len(key) != KEY_BYTES:
            raise ConfigError(f"network key must be {KEY_BYTES} bytes")
        kid = key_id(key)
        self._keys[kid] = key
        self._boxes[bytes.fromhex(kid)] = nacl.secret.SecretBox(key)
        if self._primary is None:
            self._primary = kid
        return kid

    def use(self, kid: str) -> None:
        if kid not in self._keys:
            raise ConfigError(f"network key {kid} is not installed")
        self._primary = kid

    def remove(self, kid: str) -> None:
        if kid not in self._keys:
            raise ConfigError(f"network key {kid} is not installed")
        if kid == self._primary and len(self._keys) > 1:
            raise ConfigError(f"network key {kid} is the one in use; make another key primary first")
        if kid == self._primary:
            raise ConfigError(f"network key {kid} is the only key; removing it would leave the node unable to talk")
        del self._keys[kid]
        del self._boxes[bytes.fromhex(kid)]

    def keys(self) -> list[KeyInfo]:
        return [KeyInfo(key_id=k, primary=(k == self._primary)) for k in sorted(self._keys)]

    def key_bytes(self, kid: str) -> bytes:
        return self._keys[kid]

    @property
    def primary(self) -> str | None:
        return self._primary

    @property
    def sealed(self) -> bool:
        return self._primary is not None

    # -- frames ---------------------------------------------------------
    def seal(self, plaintext: bytes) -> bytes:
        if self._primary is None:
            head = MAGIC_PLAIN + _LEN.pack(len(plaintext))
            return head + bytes(FRAME_HEADER_BYTES - len(head)) + plaintext
        kid = bytes.fromhex(self._primary)
        box = self._boxes[kid]
        nonce = nacl.utils.random(_NONCE)
        head = box.encrypt(_LEN.pack(len(plaintext)), nonce).ciphertext
        return MAGIC_SEALED + kid + nonce + head + box.encrypt(plaintext, _body_nonce(nonce)).ciphertext

    def open_header(self, header: bytes) -> FrameHeader:
        """Authenticate the first ``FRAME_HEADER_BYTES`` of a frame: ``BadSeal`` with a metrics reason, or
        the length of the body that follows and what opens it."""
        magic = header[:2]
        if magic == MAGIC_PLAIN:
            if self._primary is not None:
                raise BadSeal("Unsealed", "plain frame refused: this node requires the fleet network key")
            if len(header) < FRAME_HEADER_BYTES:
                raise BadSeal("NotAFrame", f"frame of {len(header)} bytes is shorter than its header")
            (n,) = _LEN.unpack_from(header, 2)
            return FrameHeader(body_bytes=n, box=None, nonce=b"")
        if magic != MAGIC_SEALED:
            raise BadSeal("NotAFrame", "frame does not start with the grapevine frame marker")
        if len(header) < FRAME_HEADER_BYTES:
            raise BadSeal("NotAFrame", f"sealed frame of {len(header)} bytes is shorter than its header")
        box = self._boxes.get(header[2:KEY_PREFIX_BYTES])
        if box is None:
            raise BadSeal("UnknownNetworkKey", f"frame sealed with network key {header[2:KEY_PREFIX_BYTES].hex()} not installed here")
        nonce = header[KEY_PREFIX_BYTES:KEY_PREFIX_BYTES + _NONCE]
        try:
            (n,) = _LEN.unpack(box.decrypt(header[KEY_PREFIX_BYTES + _NONCE:FRAME_HEADER_BYTES], nonce))
        except nacl.exceptions.CryptoError:
            raise BadSeal("BadSeal", "frame header does not authenticate under its network key") from None
        return FrameHeader(body_bytes=n + _MAC, box=box, nonce=_body_nonce(nonce))

    def open_body(self, head: FrameHeader, body: bytes) -> bytes:
        """Plaintext of the body announced by ``head`` (exactly ``head.body_bytes`` long)."""
        if len(body) != head.body_bytes:
            raise BadSeal("NotAFrame", f"frame body is {len(body)} bytes, its header says {head.body_bytes}")
        if head.box is None:
            return bytes(body)
        try:
            return bytes(head.box.decrypt(bytes(body), head.nonce))
        except nacl.exceptions.CryptoError:
            raise BadSeal("BadSeal", "frame does not authenticate under its network key") from None

    def open(self, frame: bytes) -> bytes:
        """Plaintext of a whole frame in memory, or ``BadSeal`` with a metrics reason."""
        head = self.open_header(frame[:FRAME_HEADER_BYTES])
        return self.open_body(head, frame[FRAME_HEADER_BYTES:])


def _body_nonce(nonce: bytes) -> bytes:
    return nonce[:-1] + bytes([nonce[-1] ^ 1])


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """An authenticated frame header: how many bytes of body follow, and what opens them."""

    body_bytes: int  # on the wire, MAC included
    box: nacl.secret.SecretBox | None
    nonce: bytes
