"""Secrets in a converge: rendered on their node, private by default, never shown in a diff, report or log."""

from __future__ import annotations

import json
import logging
import os

import pytest

from grapevine.gossip.errors import PolicyError
from grapevine.policy.bundle import Bundle
from grapevine.policy.engine import converge
from grapevine.policy.keys import SigningKey
from grapevine.policy.secrets import seal

NODE, OTHER = SigningKey(bytes([41]) * 32), SigningKey(bytes([42]) * 32)
FACTS = {"name": "db-01", "hostname": "db-01", "os": "debian"}
VALUE = "hunter2-very-secret"


def bundle(resources, name="app/db", sealed_to=NODE, value=VALUE) -> Bundle:
    doc = {"bundle": name, "resources": resources}
    if sealed_to is not None:
        doc["secrets"] = {"db_password": {sealed_to.key_id: seal(value, sealed_to.public)}}
    return Bundle.from_document(doc, "test.yaml")


DB_CONF = {"file": "/etc/db.conf", "content": "password={{ secrets.db_password }}\n", "template": True}


def shown(report) -> str:
    return json.dumps(report.to_json())


def test_a_secret_is_rendered_on_its_node_into_a_private_file(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    report = converge([bundle([DB_CONF])], root=tmp_path, facts=FACTS, node_key=NODE)
    assert report.ok, report.to_json()
    path = tmp_path / "etc/db.conf"
    assert path.read_text() == f"password={VALUE}\n"
    assert path.stat().st_mode & 0o7777 == 0o600
    [r] = report.resources
    assert r.diff == "content hidden: rendered from a secret; diff hidden\n"
    assert VALUE not in shown(report) and VALUE not in caplog.text


def test_the_bundle_may_choose_the_mode(tmp_path):
    converge([bundle([{**DB_CONF, "mode": "0640"}])], root=tmp_path, facts=FACTS, node_key=NODE)
    assert (tmp_path / "etc/db.conf").stat().st_mode & 0o7777 == 0o640


def test_an_existing_world_readable_file_is_made_private(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/db.conf").write_text(f"password={VALUE}\n")
    os.chmod(tmp_path / "etc/db.conf", 0o644)
    report = converge([bundle([DB_CONF])], root=tmp_path, facts=FACTS, node_key=NODE)
    assert report.resources[0].changes == ("mode 0644 -> 0600",)
    assert (tmp_path / "etc/db.conf").stat().st_mode & 0o7777 == 0o600


@pytest.mark.parametrize("template", [
    "password={{ secrets['db_password'] }}\n",
    "{% for k, v in secrets|dictsort %}{{ k }}={{ v }}\n{% endfor %}",
    "{% set s = secrets %}password={{ s.get('db_password') }}\n",
])
def test_every_way_of_reading_a_secret_hides_the_diff(tmp_path, template):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/db.conf").write_text("password=old-plaintext\n")
    os.chmod(tmp_path / "etc/db.conf", 0o644)
    report = converge([bundle([{"file": "/etc/db.conf", "content": template, "template": True}])],
                      root=tmp_path, facts=FACTS, node_key=NODE, dry_run=True)
    text = shown(report)
    assert "content hidden: rendered from a secret" in text
    assert VALUE not in text and "old-plaintext" not in text


def test_a_dry_run_shows_neither_the_old_nor_the_new_content(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    converge([bundle([DB_CONF])], root=tmp_path, facts=FACTS, node_key=NODE)
    plan = converge([bundle([DB_CONF], value="rotated-secret-value")], root=tmp_path, facts=FACTS, node_key=NODE,
                    dry_run=True)
    [r] = plan.resources
    assert r.status == "changed" and r.changes == ("content (hidden)",)
    for text in (shown(plan), caplog.text):
        assert VALUE not in text and "rotated-secret-value" not in text


@pytest.mark.parametrize("then", [
    {"file": "/etc/db.conf", "content": "password=none\n"},  # rewritten from plain content
    {"file": "/etc/db.conf", "ensure": "absent"},  # removed
])
@pytest.mark.parametrize("mode", [None, "0644"])
def test_rewriting_or_removing_a_secret_file_never_shows_the_old_plaintext(tmp_path, then, mode):
    first = {**DB_CONF, **({"mode": mode} if mode else {})}
    converge([bundle([first])], root=tmp_path, facts=FACTS, node_key=NODE)
    for dry_run in (True, False):
        report = converge([bundle([then])], root=tmp_path, facts=FACTS, node_key=NODE, dry_run=dry_run)
        [r] = report.resources
        assert r.status == "changed"
        assert "content hidden" in r.diff
        assert VALUE not in shown(report)


def test_a_template_error_never_quotes_a_secret(tmp_path):
    b = bundle([{"file": "/etc/x", "content": "{{ {}[secrets.db_password] }}", "template": True}])
    with pytest.raises(PolicyError) as info:
        converge([b], root=tmp_path, facts=FACTS, node_key=NODE)
    assert "<secret>" in str(info.value) and VALUE not in str(info.value)


def test_a_secret_not_sealed_to_this_node_is_named():
    with pytest.raises(PolicyError, match=rf"secret 'db_password' is not sealed to this node \(node key {OTHER.key_id}\)"):
        converge([bundle([DB_CONF])], root="/nonexistent", facts=FACTS, node_key=OTHER)


def test_an_isolated_converge_applies_the_other_bundles(tmp_path):
    """The daemon's mode: a bundle that cannot be prepared here fails alone."""
    secret = bundle([DB_CONF, {"file": "/etc/db.extra", "content": "x\n"}], sealed_to=OTHER)
    plain = Bundle.from_document({"bundle": "base/motd", "resources": [
        {"file": "/etc/motd", "content": "hello\n"},
    ]}, "t.yaml")
    report = converge([secret, plain], root=tmp_path, facts=FACTS, node_key=NODE, isolate_bundles=True)
    by = report.by_id()
    assert by["file:/etc/motd"].status == "changed" and (tmp_path / "etc/motd").read_text() == "hello\n"
    assert by["file:/etc/db.conf"].status == "failed"
    assert "secret 'db_password' is not sealed to this node" in by["file:/etc/db.conf"].error
    assert by["file:/etc/db.extra"].status == "skipped" and "app/db is not applied" in by["file:/etc/db.extra"].reason
    assert not (tmp_path / "etc/db.conf").exists() and not (tmp_path / "etc/db.extra").exists()
    with pytest.raises(PolicyError, match="not sealed to this node"):
        converge([secret, plain], root=tmp_path, facts=FACTS, node_key=NODE)  # the CLI's mode: stop everything


def test_private_files_show_no_diff_even_without_secrets(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/shadow").write_text("root:$6$hash:1:0\n")
    os.chmod(tmp_path / "etc/shadow", 0o640)
    report = converge([Bundle.from_document({"bundle": "base/x", "resources": [
        {"file": "/etc/shadow", "content": "root:*:1:0\n"}]}, "t.yaml")], root=tmp_path, facts=FACTS, dry_run=True)
    assert "$6$hash" not in shown(report)
    assert "content hidden: the file is not readable by others (mode 0640)" in report.resources[0].diff


def test_a_template_that_reads_no_secret_is_an_ordinary_file(tmp_path):
    b = bundle([{"file": "/etc/motd", "content": "no secrets here, {{ facts.name }}\n", "template": True}])
    report = converge([b], root=tmp_path, facts=FACTS, node_key=NODE)
    assert (tmp_path / "etc/motd").stat().st_mode & 0o777 == 0o644
    assert "+no secrets here, db-01" in report.resources[0].diff
