"""`grapevine bootstrap`: the cloud-init user data it prints, checked by cloud-init and then carried out.

What runs for real: cloud-init's own schema check of the document; every
file of ``write_files`` written with its mode; the first-boot script run
verbatim by /bin/sh inside a network namespace (linked by a veth to another
namespace holding a running mesh) and a private mount namespace whose /etc,
/var/lib, /usr/local and /opt are overlays onto a temporary root, with its
own host name; the agent started from the unit file the script installed
(its ExecStart, Environment= and EnvironmentFile= lines, the config file
and key files the user data wrote) joins the mesh and converges a bundle
that targets the tags given to bootstrap.

What cannot run here, and is stood in for: systemd (``systemctl`` is a
stand-in on PATH that records its arguments, links the unit into
multi-user.target.wants as ``enable`` does, and starts ExecStart with the
unit's environment as ``--now`` would); cloud-init's own boot stages (the
test writes ``write_files`` and runs ``runcmd`` as they would);
``packages:`` (python3 and iproute2 are already here); and the pip install
into /opt/grapevine, which the script skips because the test puts a
grapevine command there first (installing the wheel into a fresh
environment is tests/ops/test_packaging.py).
"""

from __future__ import annotations

import base64
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from grapevine.cli.localfleet import WaitTimeout, wait_for
from tests.node.bundles import pack_bundle

EXE = [sys.executable, "-m", "grapevine.cli.main"]
SUBNET = "10.213.78"  # private range used only between the two namespaces this test creates
PORT = 7946
OVERLAID = ("etc", "var/lib", "usr/local", "opt")


def _bootstrap(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAPEVINE_")}
    return subprocess.run([*EXE, "bootstrap", *args], capture_output=True, text=True, timeout=60, env=env)


def _schema(path: Path) -> subprocess.CompletedProcess:
    if shutil.which("cloud-init") is None:
        pytest.fail("cloud-init is missing: .ci/run installs Debian's cloud-init package")
    return subprocess.run(["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True, timeout=120)


def _base_args(keys) -> list[str]:
    return ["--join", f"{SUBNET}.1:{PORT}", "--trust", str(keys.trust), "--network-key", str(keys.netkey)]


def test_user_data_passes_cloud_init_schema_and_protects_the_network_key(keys, tmp_path):
    res = _bootstrap(*_base_args(keys), "--tag", "role=new", "--tag", "env=test", "--name", "vm-01")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("#cloud-config\n")
    ud = tmp_path / "user-data"
    ud.write_text(res.stdout)
    check = _schema(ud)
    assert check.returncode == 0, check.stdout + check.stderr
    doc = yaml.safe_load(res.stdout)
    files = {f["path"]: f for f in doc["write_files"]}
    assert files["/etc/grapevine/fleet.netkey"]["permissions"] == "0600"
    assert files["/etc/grapevine/fleet.netkey"]["content"] == keys.netkey.read_text()
    assert base64.b64decode(files["/etc/grapevine/root.gv"]["content"]) == keys.trust.read_bytes()
    toml = files["/etc/grapevine/agent.toml"]["content"]
    assert 'name = "vm-01"' in toml and 'role = "new"' in toml and f'"{SUBNET}.1:{PORT}"' in toml
    assert doc["runcmd"] == [["/usr/local/sbin/grapevine-bootstrap"]]
    script = files["/usr/local/sbin/grapevine-bootstrap"]["content"]
    assert "systemctl enable --now grapevine-agent.service" in script
    assert "pip\" install --quiet grapevine-mesh==" in script
    assert subprocess.run(["sh", "-n", "-c", script], timeout=10).returncode == 0

    # the schema check is not a rubber stamp: a broken document fails it
    broken = tmp_path / "broken"
    broken.write_text(res.stdout.replace("write_files:", "write_files: 5\nignored:"))
    assert _schema(broken).returncode != 0


def test_wheel_url_replaces_the_registry_install(keys):
    res = _bootstrap(*_base_args(keys), "--wheel-url", "https://example.invalid/grapevine_mesh-0.1.0-py3-none-any.whl")
    assert res.returncode == 0, res.stderr
    assert "install --quiet https://example.invalid/grapevine_mesh-0.1.0-py3-none-any.whl" in res.stdout


@pytest.mark.parametrize("args, named", [
    (["--join", "nohost"], "--join"),
    (["--tag", "no-equals"], "--tag"),
    (["--name", "bad name!"], "--name"),
    (["--advertise", "1.2.3.4"], "--advertise"),
])
def test_bad_input_is_refused_by_name(keys, args, named):
    res = _bootstrap(*_base_args(keys), *args)
    assert res.returncode == 2 and named in res.stderr and res.stdout == "", res.stderr


def test_a_file_that_is_not_a_trust_root_is_refused(keys, tmp_path):
    fake = tmp_path / "root.gv"
    fake.write_bytes(b"not a trust root")
    res = _bootstrap("--join", f"{SUBNET}.1:{PORT}", "--trust", str(fake), "--network-key", str(keys.netkey))
    assert res.returncode == 2 and "--trust" in res.stderr and res.stdout == ""


def test_a_network_key_readable_by_others_is_refused(keys, tmp_path):
    loose = tmp_path / "fleet.netkey"
    loose.write_text(keys.netkey.read_text())
    loose.chmod(0o644)
    res = _bootstrap("--join", f"{SUBNET}.1:{PORT}", "--trust", str(keys.trust), "--network-key", str(loose))
    assert res.returncode == 2 and "chmod 600" in res.stderr


# -- the whole path, as root -----------------------------------------------------
_why_not = None
if os.geteuid() != 0:
    _why_not = "network and mount namespaces need root"
elif shutil.which("ip") is None or shutil.which("unshare") is None:
    _why_not = "the `ip` (iproute2) and `unshare` (util-linux) commands are needed"

SYSTEMCTL = '''#!{python}
"""Stand-in for systemctl: records its arguments; enable --now links the unit and starts ExecStart."""
import os, shlex, subprocess, sys
args = sys.argv[1:]
with open({log!r}, "a") as fh:
    fh.write(" ".join(args) + "\\n")
if args[:2] == ["enable", "--now"]:
    unit = "/etc/systemd/system/" + args[2]
    env = {{"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}}
    execstart = None
    wanted = None
    for line in open(unit):
        key, _, value = line.strip().partition("=")
        if key == "Environment":
            k, _, v = value.partition("=")
            env[k] = v
        elif key == "EnvironmentFile":
            path = value.lstrip("-")
            if os.path.exists(path):
                for l in open(path):
                    k, _, v = l.strip().partition("=")
                    if k and not k.startswith("#"):
                        env[k] = v
        elif key == "ExecStart":
            execstart = value
        elif key == "WantedBy":
            wanted = value
    os.makedirs(f"/etc/systemd/system/{{wanted}}.wants", exist_ok=True)
    os.symlink(unit, f"/etc/systemd/system/{{wanted}}.wants/{{args[2]}}")
    with open({agent_log!r}, "ab") as out:
        p = subprocess.Popen(shlex.split(execstart), env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                             start_new_session=True)
    with open({pidfile!r}, "w") as fh:
        fh.write(str(p.pid))
'''


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True, timeout=10)


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for its reaper counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _end(pid: int) -> None:
    """SIGTERM, then SIGKILL after 10 s: the agent the stand-in systemctl started (no longer our child)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _alive(pid):
            return
        os.kill(pid, sig)
        try:
            wait_for(lambda: not _alive(pid), 10, f"pid {pid} to exit after signal {sig}", interval=0.1)
        except WaitTimeout:
            continue


def _write_files(doc: dict, upper: Path) -> None:
    """cloud-init's write_files, into the overlay upper layers (path /etc/x -> upper/etc/x)."""
    for f in doc["write_files"]:
        path = upper / f["path"].lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        data = base64.b64decode(f["content"]) if f.get("encoding") == "b64" else f["content"].encode()
        path.write_bytes(data)
        path.chmod(int(f["permissions"], 8))


@pytest.mark.slow
@pytest.mark.netns
@pytest.mark.skipif(_why_not is not None, reason=_why_not or "")
def test_a_new_machine_joins_and_converges_from_its_user_data_alone(fleet, keys, tmp_path):
    tag = f"{os.getpid() % 100000:05d}"
    hub_ns, vm_ns = f"gvb{tag}hub", f"gvb{tag}vm"
    base = tmp_path / "vm"
    upper, work = base / "upper", base / "work"
    for d in OVERLAID:
        (upper / d).mkdir(parents=True, exist_ok=True)
        (work / d).mkdir(parents=True, exist_ok=True)
    calls, pidfile, agent_log = base / "systemctl.log", base / "agent.pid", base / "agent.log"
    stub = base / "stub"
    stub.mkdir()
    (stub / "systemctl").write_text(SYSTEMCTL.format(python=sys.executable, log=str(calls), agent_log=str(agent_log),
                                                     pidfile=str(pidfile)))
    (stub / "systemctl").chmod(0o755)
    # what `pip install` would have put in /opt/grapevine (see the module docstring)
    venv_bin = upper / "opt/grapevine/bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "grapevine").write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m grapevine.cli.main \"$@\"\n")
    (venv_bin / "python").write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    for f in venv_bin.iterdir():
        f.chmod(0o755)

    vm_pid = None
    try:
        for ns in (hub_ns, vm_ns):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", hub_ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", vm_ns)
        for i, ns in enumerate((hub_ns, vm_ns), start=1):
            _ip("-n", ns, "addr", "add", f"{SUBNET}.{i}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

        hub = [fleet.add(f"hub{i}", port=PORT + i, host=f"{SUBNET}.1", netns=hub_ns, join=[f"{SUBNET}.1:{PORT}"] if i else [], tags={"role": "hub"}) for i in range(2)]
        fleet.up(*hub)

        res = _bootstrap("--join", f"{SUBNET}.1:{PORT}", "--join", f"{SUBNET}.1:{PORT + 1}", "--trust", str(keys.trust),
                         "--network-key", str(keys.netkey), "--tag", "role=new")
        assert res.returncode == 0, res.stderr
        (base / "user-data").write_text(res.stdout)
        assert _schema(base / "user-data").returncode == 0
        doc = yaml.safe_load(res.stdout)
        _write_files(doc, upper)

        mounts = " && ".join(
            f"mount -t overlay overlay -o lowerdir=/{d},upperdir={upper / d},workdir={work / d} /{d}" for d in OVERLAID)
        runcmd = " && ".join(shlex.join(c) for c in doc["runcmd"])
        inner = (f"mount --make-rprivate / && {mounts} && hostname vm-new && "
                 f"PATH={stub}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin {runcmd}")
        boot = subprocess.run(["ip", "netns", "exec", vm_ns, "unshare", "--mount", "--uts", "sh", "-c", inner],
                              capture_output=True, text=True, timeout=120)
        if pidfile.exists():
            vm_pid = int(pidfile.read_text())
        assert boot.returncode == 0, boot.stdout + boot.stderr

        assert calls.read_text().splitlines() == ["daemon-reload", "enable --now grapevine-agent.service"]
        etc = upper / "etc"
        assert (etc / "systemd/system/multi-user.target.wants/grapevine-agent.service").is_symlink()
        assert "Type=notify" in (etc / "systemd/system/grapevine-agent.service").read_text()
        assert stat.S_IMODE((etc / "grapevine/fleet.netkey").stat().st_mode) == 0o600
        assert stat.S_IMODE((etc / "grapevine/agent.env").stat().st_mode) == 0o600
        env_lines = (etc / "grapevine/agent.env").read_text().splitlines()
        assert env_lines == ["GRAPEVINE_NAME=vm-new", f"GRAPEVINE_ADVERTISE={SUBNET}.2:{PORT}"]
        assert os.readlink(upper / "usr/local/bin/grapevine") == "/opt/grapevine/bin/grapevine"
        assert vm_pid is not None

        vm_id = f"vm-new@{SUBNET}.2:{PORT}"

        def vm_answers():
            if not _alive(vm_pid):
                raise AssertionError(f"the new machine's agent exited:\n{agent_log.read_text()[-3000:]}")
            return vm_id in hub[0].client(30).post("/v1/fleet/query", {"kind": "status", "selector": "role=new"})["answers"]

        wait_for(vm_answers, 60, "the new machine in the fleet", interval=0.5)
        item = pack_bundle(keys, "fleet/motd", "role=new", {"/etc/motd.d/grapevine": "joined by itself\n"})
        hub[1].client().post("/v1/inject", data=item.encode())
        converged = upper / "etc/motd.d/grapevine"
        wait_for(lambda: converged.is_file() and converged.read_text() == "joined by itself\n", 60,
                 "the bundle converged on the new machine", interval=0.2)
        assert not (hub[0].root / "etc/motd.d/grapevine").exists()  # it targets role=new only
        assert not Path("/etc/motd.d/grapevine").exists()  # and the host's own /etc was never touched
    finally:
        if vm_pid is None and pidfile.exists():
            vm_pid = int(pidfile.read_text())
        if vm_pid is not None:
            _end(vm_pid)
        fleet.close()
        for ns in (vm_ns, hub_ns):
            _ip("netns", "del", ns, check=False)
