"""Fleet network keys: sealing, several keys accepted, one used, rotation."""

from __future__ import annotations

import os

import pytest

from grapevine.gossip.errors import ConfigError
from grapevine.node.netkey import BadSeal, KeyRing, generate_key, read_key_file, write_key_file


def _ring(*keys: bytes) -> KeyRing:
    ring = KeyRing()
    for k in keys:
        ring.install(k)
    return ring


def test_frame_sealed_with_the_fleet_key_opens_on_another_node():
    key = generate_key()
    assert _ring(key).open(_ring(key).seal(b"hello")) == b"hello"


def test_frame_sealed_with_an_unknown_key_is_refused_by_reason():
    with pytest.raises(BadSeal) as err:
        _ring(generate_key()).open(_ring(generate_key()).seal(b"hello"))
    assert err.value.reason == "UnknownNetworkKey"


def test_tampered_frame_does_not_authenticate():
    key = generate_key()
    frame = bytearray(_ring(key).seal(b"hello world"))
    frame[-1] ^= 1
    with pytest.raises(BadSeal) as err:
        _ring(key).open(bytes(frame))
    assert err.value.reason == "BadSeal"


@pytest.mark.parametrize(("frame", "reason"), [(b"", "NotAFrame"), (b"\x93\x01\x02", "NotAFrame"), (b"G\x01abc", "NotAFrame"), (b"G\x00plain", "Unsealed")])
def test_garbage_and_plain_frames_are_refused_when_a_key_is_installed(frame, reason):
    with pytest.raises(BadSeal) as err:
        _ring(generate_key()).open(frame)
    assert err.value.reason == reason


def test_rotation_accepts_both_keys_then_only_the_new_one():
    old, new = generate_key(), generate_key()
    a, b = _ring(old), _ring(old)
    new_id = a.install(new)
    b.install(new)
    assert b.open(a.seal(b"x")) == b"x"  # still sealing with old
    a.use(new_id)
    assert b.open(a.seal(b"y")) == b"y"  # b accepts the new key already
    old_id = [k.key_id for k in b.keys() if k.key_id != new_id][0]
    with pytest.raises(ConfigError, match="in use"):
        b.remove(new_id) if b.primary == new_id else a.remove(new_id)
    b.use(new_id)
    b.remove(old_id)
    with pytest.raises(BadSeal):
        b.open(_ring(old).seal(b"z"))


def test_node_without_keys_sends_plain_frames_that_keyed_nodes_refuse():
    plain = KeyRing()
    assert plain.open(plain.seal(b"x")) == b"x"
    with pytest.raises(BadSeal):
        _ring(generate_key()).open(plain.seal(b"x"))


def test_key_file_roundtrip_is_private_and_never_overwritten(tmp_path):
    path = tmp_path / "fleet.netkey"
    key = generate_key()
    write_key_file(path, key)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert read_key_file(path) == key
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        write_key_file(path, generate_key())


@pytest.mark.parametrize(("text", "mode", "message"), [
    ("grapevine-netkey-v1:AAAA\n", 0o600, "must be 32 bytes"),
    ("grapevine-netkey-v1:!!!\n", 0o600, "not valid base64"),
    ("something else\n", 0o600, "not a grapevine network key"),
    ("grapevine-netkey-v1:" + "A" * 43 + "=\n", 0o644, "readable by group or others"),
])
def test_bad_key_files_are_refused_with_the_reason(tmp_path, text, mode, message):
    path = tmp_path / "k"
    path.write_text(text)
    os.chmod(path, mode)
    with pytest.raises(ConfigError, match=message):
        read_key_file(path)
