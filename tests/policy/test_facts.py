"""Facts are read from this machine; tags from the agent config are added."""

from __future__ import annotations

import ipaddress
import os
import platform
import socket

import pytest

from grapevine.gossip.errors import ConfigError
from grapevine.policy.facts import GATHERED, gather, parse_tags


def test_gathered_facts_describe_this_machine():
    facts = gather()
    assert set(GATHERED) <= set(facts)
    assert facts["hostname"] == socket.gethostname()
    assert facts["name"] == facts["hostname"]
    assert facts["arch"] == platform.machine()
    assert facts["cpu_count"] == os.cpu_count()
    with open("/proc/meminfo") as fh:
        total_kb = int(fh.readline().split()[1])
    assert facts["memory_mb"] == total_kb // 1024
    with open("/etc/os-release") as fh:
        rel = dict(line.rstrip("\n").split("=", 1) for line in fh if "=" in line)
    assert facts["os"] == rel["ID"].strip('"')
    if "VERSION_ID" in rel:
        assert facts["os_version"] == rel["VERSION_ID"].strip('"')


def test_addresses_are_valid_and_exclude_loopback():
    facts = gather()
    assert isinstance(facts["addresses"], list)
    for addr in facts["addresses"]:
        assert not ipaddress.ip_address(addr).is_loopback
    assert len(set(facts["addresses"])) == len(facts["addresses"])


def test_tags_and_node_name_become_facts():
    facts = gather({"role": "web", "env": "prod"}, name="web-01")
    assert facts["role"] == "web" and facts["env"] == "prod"
    assert facts["name"] == "web-01"
    assert facts["hostname"] == socket.gethostname()


@pytest.mark.parametrize("tag", ["os", "arch", "hostname", "addresses"])
def test_a_tag_may_not_shadow_a_gathered_fact(tag):
    with pytest.raises(ConfigError, match="shadow"):
        gather({tag: "x"})


PARSE_CASES = [
    (["role=web"], {"role": "web"}),
    (["role=web", "env=prod"], {"role": "web", "env": "prod"}),
    (["site.zone=eu-1"], {"site.zone": "eu-1"}),
    (["empty="], {"empty": ""}),
    (["k=a=b"], {"k": "a=b"}),
]


@pytest.mark.parametrize("pairs,expected", PARSE_CASES)
def test_parse_tags_reads_key_value_pairs(pairs, expected):
    assert parse_tags(pairs) == expected


@pytest.mark.parametrize("bad", ["role", "=web", "1role=x", "ro le=x", "x=" + "v" * 300])
def test_parse_tags_refuses_malformed_pairs(bad):
    with pytest.raises(ConfigError):
        parse_tags([bad])


def test_facts_are_plain_serialisable_data():
    import json

    facts = gather({"role": "web"})
    assert json.loads(json.dumps(facts)) == facts
