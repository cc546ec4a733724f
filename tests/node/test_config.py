"""Agent configuration: TOML < GRAPEVINE_* environment < flags, every bad value named."""

from __future__ import annotations

from pathlib import Path

import pytest

from grapevine.gossip.errors import ConfigError
from grapevine.node.config import AgentConfig, check_config, load_config, read_toml


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(text)
    return p


def test_flags_override_environment_which_overrides_the_file(tmp_path):
    cfg_file = _write(tmp_path, 'name = "file"\nbind = "127.0.0.1:7000"\nconverge_debounce_ms = 50\n[tags]\nrole = "db"\n')
    env = {"GRAPEVINE_NAME": "env", "GRAPEVINE_BIND": "127.0.0.1:7001", "GRAPEVINE_TAGS": "role=web,env=prod"}
    cfg = load_config(config_file=cfg_file, environ=env, flags={"name": "flag", "data_dir": str(tmp_path)})
    assert cfg.name == "flag"
    assert cfg.bind == "127.0.0.1:7001"
    assert dict(cfg.tags) == {"role": "web", "env": "prod"}
    assert cfg.converge_debounce_ms == 50
    assert cfg.node_id == "flag@127.0.0.1:7001"


def test_agent_table_and_join_list_from_environment(tmp_path):
    cfg_file = _write(tmp_path, '[agent]\nname = "a"\nbind = "127.0.0.1:7000"\ngossip_preset = "local"\n')
    cfg = load_config(config_file=cfg_file, environ={"GRAPEVINE_JOIN": "127.0.0.1:1, 127.0.0.1:2"},
                      flags={"data_dir": str(tmp_path)})
    assert cfg.join == ("127.0.0.1:1", "127.0.0.1:2")
    assert cfg.gossip_preset == "local"
    assert cfg.gossip_config().antientropy_interval_ms == 500  # the local preset


def test_gossip_settings_override_the_preset(tmp_path):
    cfg_file = _write(tmp_path, 'name = "a"\nbind = "127.0.0.1:1"\ngossip_preset = "local"\n[gossip]\nantientropy_interval_ms = 900\n')
    cfg = load_config(config_file=cfg_file, environ={"GRAPEVINE_GOSSIP": "jitter=0.1"}, flags={"data_dir": str(tmp_path)})
    g = cfg.gossip_config()
    assert g.jitter == 0.1  # the environment replaces the whole table
    assert g.antientropy_interval_ms == 500
    cfg = load_config(config_file=cfg_file, environ={}, flags={"data_dir": str(tmp_path)})
    assert cfg.gossip_config().antientropy_interval_ms == 900 and cfg.gossip_config().probe_interval_ms == 300
    assert cfg.socket_path == tmp_path / "agent.sock"


def test_flags_not_given_leave_lower_layers_alone(tmp_path):
    cfg = load_config(environ={"GRAPEVINE_JOIN": "127.0.0.1:9"},
                      flags={"name": "a", "bind": "127.0.0.1:7000", "join": (), "data_dir": str(tmp_path), "root": None})
    assert cfg.join == ("127.0.0.1:9",)
    assert cfg.root == Path("/")


@pytest.mark.parametrize(
    ("flags", "env", "toml", "message"),
    [
        ({"bind": "127.0.0.1:7000"}, {}, "", "'name' is required"),
        ({"name": "a"}, {}, "", "'bind' is required"),
        ({"name": "a", "bind": "localhost"}, {}, "", "bind: expected HOST:PORT"),
        ({"name": "a", "bind": "127.0.0.1:70000"}, {}, "", "out of range"),
        ({"name": "bad name", "bind": "127.0.0.1:1"}, {}, "", "name: 'bad name'"),
        ({"name": "a", "bind": "0.0.0.0:1"}, {}, "", "explicit 'advertise'"),
        ({"name": "a", "bind": "127.0.0.1:1", "tags": ["nokey"]}, {}, "", "must look like key=value"),
        ({"name": "a", "bind": "127.0.0.1:1"}, {"GRAPEVINE_CONVERGE_DEBOUNCE_MS": "soon"}, "", "GRAPEVINE_CONVERGE_DEBOUNCE_MS"),
        ({"name": "a", "bind": "127.0.0.1:1"}, {"GRAPEVINE_STALE_AFTER_S": "0"}, "", "stale_after_s"),
        ({"name": "a", "bind": "127.0.0.1:1"}, {}, "colour = 'red'\n", "unknown setting 'colour'"),
        ({"name": "a", "bind": "127.0.0.1:1"}, {}, "name = [\n", "not valid TOML"),
        ({"name": "a", "bind": "127.0.0.1:1", "log_format": "xml"}, {}, "", "log_format"),
        ({"name": "a", "bind": "127.0.0.1:1", "gossip_preset": "wan"}, {}, "", "gossip_preset"),
        ({"name": "a", "bind": "127.0.0.1:1", "trust": "/nonexistent/root.gv"}, {}, "", "trust root file"),
        ({"name": "a", "bind": "127.0.0.1:1", "join": ["nowhere"]}, {}, "", "join: expected HOST:PORT"),
        ({"name": "a", "bind": "127.0.0.1:1"}, {"GRAPEVINE_GOSSIP": "speed=11"}, "", "unknown gossip setting 'speed'"),
        ({"name": "a", "bind": "127.0.0.1:1"}, {"GRAPEVINE_GOSSIP": "jitter=2"}, "", "gossip: jitter"),
        ({"name": "a", "bind": "127.0.0.1:1", "run_user": "no-such-user-here"}, {}, "", "run_user: there is no user"),
        ({"name": "a", "bind": "127.0.0.1:1"}, {"GRAPEVINE_HISTORY_KEEP": "0"}, "", "history_keep: 0 must be a whole number from 1"),
        ({"name": "a", "bind": "127.0.0.1:1"}, {}, "history_keep = 100000\n", "history_keep: 100000"),
    ],
)
def test_bad_settings_are_refused_with_their_name(tmp_path, flags, env, toml, message):
    cfg_file = _write(tmp_path, toml) if toml else None
    with pytest.raises(ConfigError, match=message):
        load_config(config_file=cfg_file, environ=env, flags={"data_dir": str(tmp_path), **flags})


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(config_file=tmp_path / "nope.toml", environ={}, flags={})


def test_example_config_file_loads(tmp_path):
    example = Path(__file__).resolve().parents[2] / "node" / "agent.example.toml"
    settings = read_toml(example)  # every key is a known setting with a value of the right kind
    settings.update(trust=None, network_key=None, data_dir=tmp_path)  # files that exist only on a real node
    cfg = AgentConfig(**settings)
    check_config(cfg)
    assert cfg.node_id == "web-01@10.0.0.11:7946" and dict(cfg.tags) == {"role": "web", "env": "prod"}
