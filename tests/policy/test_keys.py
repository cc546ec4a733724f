"""Key files: written 0600, refused when exposed, missing or of the wrong kind."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile

import pytest

from grapevine.gossip.errors import TrustError
from grapevine.policy.keys import KEY_ID_BYTES, PublicKey, SigningKey, key_id


def test_saved_private_key_is_0600_and_loads_back_with_same_id(tmp_path):
    key = SigningKey.generate()
    pub_path = key.save(tmp_path / "alice.key")
    assert stat.S_IMODE(os.stat(tmp_path / "alice.key").st_mode) == 0o600
    assert pub_path == tmp_path / "alice.key.pub"
    loaded = SigningKey.load(tmp_path / "alice.key")
    assert loaded.key_id == key.key_id
    assert PublicKey.load(pub_path) == key.public
    sig = loaded.sign(b"hello")
    assert PublicKey.load(pub_path).verify(b"hello", sig)
    assert not key.public.verify(b"hellO", sig)


def test_save_honours_0600_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        SigningKey.generate().save(tmp_path / "k.key")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "k.key").st_mode) == 0o600


def test_key_id_is_16_hex_chars_of_the_public_key():
    key = SigningKey(b"\x01" * 32)
    assert len(key.key_id) == 2 * KEY_ID_BYTES == 16
    assert key.key_id == key_id(key.public.raw)
    int(key.key_id, 16)
    assert SigningKey(b"\x02" * 32).key_id != key.key_id


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_private_key_readable_by_group_or_others_is_refused(tmp_path, mode):
    path = tmp_path / "alice.key"
    SigningKey.generate().save(path)
    os.chmod(path, mode)
    with pytest.raises(TrustError) as info:
        SigningKey.load(path)
    assert str(path) in str(info.value)
    assert "group or others" in str(info.value)


def test_existing_key_file_is_never_overwritten(tmp_path):
    path = tmp_path / "alice.key"
    first = SigningKey.generate()
    first.save(path)
    with pytest.raises(TrustError, match="already exists"):
        SigningKey.generate().save(path)
    assert SigningKey.load(path).key_id == first.key_id


def _write(path, text, mode=0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize(
    "setup,loader,message",
    [
        ("missing", SigningKey.load, "does not exist"),
        ("missing", PublicKey.load, "does not exist"),
        ("public", SigningKey.load, "is a public key file"),
        ("private", PublicKey.load, "is a private key file"),
        ("garbage", SigningKey.load, "not a grapevine key file"),
        ("short", SigningKey.load, "expected 32"),
        ("nothex", PublicKey.load, "not hexadecimal"),
        ("directory", SigningKey.load, "not a regular file"),
    ],
)
def test_bad_key_files_are_refused_naming_the_path(tmp_path, setup, loader, message):
    key = SigningKey.generate()
    key.save(tmp_path / "real.key")
    path = {
        "missing": lambda: tmp_path / "nope.key",
        "public": lambda: tmp_path / "real.key.pub",
        "private": lambda: tmp_path / "real.key",
        "garbage": lambda: _write(tmp_path / "g.key", "hello\nworld\n"),
        "short": lambda: _write(tmp_path / "s.key", "grapevine-ed25519-private-key v1\nabcd\n"),
        "nothex": lambda: _write(tmp_path / "n.pub", "grapevine-ed25519-public-key v1\n" + "zz" * 32 + "\n"),
        "directory": lambda: (tmp_path / "dir.key").mkdir() or tmp_path / "dir.key",
    }[setup]()
    with pytest.raises(TrustError) as info:
        loader(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


UNREADABLE_PROBE = """
import os, sys
from grapevine.gossip.errors import TrustError
from grapevine.policy.keys import SigningKey
os.setgid(65534); os.setuid(65534)  # nobody: the file below belongs to root, mode 0600
try:
    SigningKey.load(sys.argv[1])
except TrustError as exc:
    print(exc)
"""


def test_unreadable_key_file_is_refused_naming_the_path(tmp_path):
    path = tmp_path / "alice.key"
    SigningKey.generate().save(path)
    if os.geteuid() != 0:
        os.chmod(path, 0o000)
        with pytest.raises(TrustError, match="not readable") as info:
            SigningKey.load(path)
        assert str(path) in str(info.value)
        return
    # root reads any file, so ask an unprivileged process to load one root owns
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        os.chmod(d, 0o755)
        probe = os.path.join(d, "alice.key")
        SigningKey.generate().save(probe)
        out = subprocess.run([sys.executable, "-c", UNREADABLE_PROBE, probe], capture_output=True, text=True, timeout=30)
    assert "not readable" in out.stdout, out.stderr
    assert probe in out.stdout


def test_repr_never_shows_the_private_key():
    key = SigningKey(b"\x07" * 32)
    assert "07" * 8 not in repr(key)
    assert key.key_id in repr(key)


def test_verify_rejects_signatures_of_the_wrong_length():
    key = SigningKey.generate()
    assert not key.public.verify(b"x", b"")
    assert not key.public.verify(b"x", key.sign(b"x")[:-1])
