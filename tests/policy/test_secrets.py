"""Per-node secrets: sealed at pack time, opened only by the named node, never shown."""

from __future__ import annotations

import logging
import pickle

import pytest
from click.testing import CliRunner

from grapevine.cli.main import cli
from grapevine.gossip.errors import PolicyError, TrustError
from grapevine.gossip.item import SignedItem
from grapevine.policy.bundle import Bundle, bundles_from_file
from grapevine.policy.keys import SigningKey
from grapevine.policy.secrets import SecretValue, open_sealed, seal, secrets_for

WEB1, WEB2, OTHER = (SigningKey(bytes([i]) * 32) for i in (31, 32, 33))


def test_sealed_value_opens_only_with_the_node_key():
    sealed = seal("s3cret", WEB1.public)
    assert b"s3cret" not in sealed
    assert open_sealed(sealed, WEB1).reveal() == b"s3cret"
    with pytest.raises(TrustError, match=WEB2.key_id):
        open_sealed(sealed, WEB2)


def test_altered_sealed_value_is_refused():
    sealed = bytearray(seal(b"token", WEB1.public))
    sealed[-1] ^= 1
    with pytest.raises(TrustError):
        open_sealed(bytes(sealed), WEB1)


def test_secret_value_never_shows_in_repr_str_format_or_logs(caplog):
    value = SecretValue(b"hunter2")
    caplog.set_level(logging.INFO)
    logging.getLogger("grapevine.policy").info("value is %s / %r / %s", value, value, f"{value}")
    for text in (repr(value), str(value), f"{value}", f"{value!r}", repr({"pw": value}), caplog.text):
        assert "hunter2" not in text
    assert value.text() == "hunter2"
    with pytest.raises(TypeError):
        pickle.dumps(value)


def test_policy_file_secrets_are_sealed_per_node_when_packing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keys").mkdir()
    WEB1.public.save(tmp_path / "keys" / "web1.node.pub")
    WEB2.public.save(tmp_path / "keys" / "web2.node.pub")
    SigningKey.generate().save(tmp_path / "alice.key")
    (tmp_path / "site.yaml").write_text(
        "bundle: web/db\n"
        "resources:\n  - file: /etc/db.conf\n    content: x\n"
        "secrets:\n  db_password:\n    keys/web1.node.pub: one-secret\n    keys/web2.node.pub: two-secret\n"
    )
    [bundle] = bundles_from_file(str(tmp_path / "site.yaml"))
    assert set(bundle.secrets["db_password"]) == {WEB1.key_id, WEB2.key_id}
    assert b"one-secret" not in bundle.encode() and "one-secret" not in repr(bundle)
    assert secrets_for(bundle, WEB1)["db_password"].text() == "one-secret"
    assert secrets_for(bundle, WEB2)["db_password"].text() == "two-secret"
    assert secrets_for(bundle, OTHER) == {}

    r = CliRunner().invoke(cli, ["bundle", "pack", "site.yaml", "--key", "alice.key", "--out", "db.gv"])
    assert r.exit_code == 0, r.output
    data = (tmp_path / "db.gv").read_bytes()
    assert b"one-secret" not in data and b"two-secret" not in data
    travelled = Bundle.decode(SignedItem.decode(data).payload)
    assert secrets_for(travelled, WEB2)["db_password"].reveal() == b"two-secret"
    shown = CliRunner().invoke(cli, ["bundle", "show", "db.gv"])
    assert "secret db_password sealed for" in shown.stdout and "secret" in shown.stdout
    assert "two-secret" not in shown.stdout


@pytest.mark.parametrize(
    "secrets,message",
    [
        ({"pw": "plain"}, "must map node public key files"),
        ({"pw": {"missing.pub": "x"}}, "does not exist"),
        ({"pw": {"node.pub": 42}}, "must be text"),
    ],
)
def test_bad_secret_entries_are_refused(tmp_path, secrets, message):
    from grapevine.policy.secrets import seal_document

    WEB1.public.save(tmp_path / "node.pub")
    with pytest.raises(PolicyError, match=message):
        seal_document({"bundle": "a", "secrets": secrets}, tmp_path, "site.yaml")
