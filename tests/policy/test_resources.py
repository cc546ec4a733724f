"""Resource providers for real: dpkg into a temporary root, pip into a
temporary virtual environment, shadow-utils with --prefix, exec guards.

The ``service`` tests run a stand-in ``systemctl`` placed first on PATH that
records every command line and answers ``is-active``/``is-enabled`` from
state files, because systemd is not running here: what they pin is the exact
systemctl commands the provider runs.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from grapevine.policy.bundle import Bundle
from grapevine.policy.engine import converge

FACTS = {"name": "n1", "os": "debian", "cpu_count": 2}
IS_ROOT = os.geteuid() == 0


def bundle(resources, name="site/base", files=None) -> Bundle:
    return Bundle.from_document({"bundle": name, "resources": resources, "files": files or {}}, "test.yaml")


def run(resources, root, *, dry_run=False):
    return converge([bundle(resources)], root=root, facts=FACTS, dry_run=dry_run)


def statuses(report) -> dict[str, str]:
    return {r.id: r.status for r in report.resources}


# ---------------------------------------------------------------- exec


def _touch(root: Path, rel: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text("")


EXEC_CASES = [
    # (attributes, file to create first or None, expected status, reason words)
    ({"creates": "/done"}, "done", "unchanged", "/done exists"),
    ({"creates": "/done"}, None, "changed", ""),
    ({"onlyif": "false"}, None, "unchanged", "onlyif exited 1"),
    ({"onlyif": ["test", "-e", "/"]}, None, "changed", ""),
    ({"unless": "true"}, None, "unchanged", "unless exited 0"),
    ({"unless": "exit 4"}, None, "changed", ""),
    ({"unless": "test -e \"$GRAPEVINE_ROOT/flag\""}, "flag", "unchanged", "unless exited 0"),
    ({"refresh_only": True}, None, "unchanged", "refresh-only and not notified"),
]


@pytest.mark.parametrize("attrs,existing,expected,reason", EXEC_CASES)
def test_exec_guards_decide_whether_the_command_runs(tmp_path, attrs, existing, expected, reason):
    if existing:
        _touch(tmp_path, existing)
    res = {"exec": "mark", "command": "echo ran >> \"$GRAPEVINE_ROOT/ran\"", **attrs}
    report = run([res], tmp_path)
    r = report.by_id()["exec:mark"]
    assert r.status == expected, r
    assert reason in r.reason
    assert (tmp_path / "ran").exists() is (expected == "changed")


def test_exec_runs_in_cwd_under_the_root_with_env(tmp_path):
    (tmp_path / "work").mkdir()
    res = {"exec": "pwd", "command": ["sh", "-c", "pwd > out; echo \"$GREETING\" >> out"], "cwd": "/work", "env": {"GREETING": "hi"}}
    run([res], tmp_path)
    assert (tmp_path / "work/out").read_text() == f"{tmp_path}/work\nhi\n"


def test_exec_timeout_kills_the_command_and_its_children(tmp_path):
    res = {"exec": "slow", "command": "sleep 30 & sleep 30; echo never", "timeout": 0.5}
    report = run([res], tmp_path)
    r = report.by_id()["exec:slow"]
    assert r.status == "failed" and "timed out after 0.5s" in r.error
    assert r.duration_ms < 10_000


def test_exec_output_is_bounded(tmp_path):
    from grapevine.policy.resources.base import MAX_OUTPUT_BYTES

    report = run([{"exec": "chatty", "command": "head -c 1000000 /dev/zero | tr '\\0' x"}], tmp_path)
    out = report.by_id()["exec:chatty"].output
    assert len(out) <= MAX_OUTPUT_BYTES + 3 and out.startswith("...")


# ---------------------------------------------------------------- service


FAKE_SYSTEMCTL = """#!/bin/sh
# records its command line; state lives in files under $FAKE_SYSTEMD_STATE
echo "$*" >> "$FAKE_SYSTEMD_STATE/log"
root=""
case "$1" in --root=*) root="$1"; shift;; esac
verb="$1"; shift
[ "$1" = "--quiet" ] && shift
unit="$1"
case "$verb" in
  is-active) [ -e "$FAKE_SYSTEMD_STATE/active-$unit" ] ;;
  is-enabled) [ -e "$FAKE_SYSTEMD_STATE/enabled-$unit" ] ;;
  start|restart|reload) touch "$FAKE_SYSTEMD_STATE/active-$unit" ;;
  try-restart|try-reload-or-restart) true ;;
  stop) rm -f "$FAKE_SYSTEMD_STATE/active-$unit" ;;
  enable) touch "$FAKE_SYSTEMD_STATE/enabled-$unit" ;;
  disable) rm -f "$FAKE_SYSTEMD_STATE/enabled-$unit" ;;
  *) exit 64 ;;
esac
"""


@pytest.fixture
def systemd(tmp_path, monkeypatch):
    state = tmp_path / "systemd-state"
    bindir = tmp_path / "bin"
    state.mkdir()
    bindir.mkdir()
    script = bindir / "systemctl"
    script.write_text(FAKE_SYSTEMCTL)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SYSTEMD_STATE", str(state))
    root = tmp_path / "root"
    root.mkdir()

    class Systemd:
        def log(self) -> list[str]:
            path = state / "log"
            lines = path.read_text().splitlines() if path.exists() else []
            path.unlink(missing_ok=True)
            return lines

        def set(self, name: str) -> None:
            (state / name).touch()

    s = Systemd()
    s.root = root
    return s


def test_service_is_enabled_under_the_root_and_started_on_the_running_manager(systemd):
    """Runs the stand-in systemctl: checks the exact commands, not a real systemd."""
    root = systemd.root
    report = run([{"service": "nginx", "running": True, "enabled": True}], root)
    assert statuses(report) == {"service:nginx": "changed"}
    assert systemd.log() == [
        f"--root={root} is-enabled --quiet nginx",
        "is-active --quiet nginx",
        f"--root={root} enable nginx",
        "start nginx",
    ]
    again = run([{"service": "nginx", "running": True, "enabled": True}], root)
    assert statuses(again) == {"service:nginx": "unchanged"}
    assert again.by_id()["service:nginx"].reason == "enabled and running"
    assert systemd.log() == [f"--root={root} is-enabled --quiet nginx", "is-active --quiet nginx"]


def test_service_dry_run_lists_commands_and_runs_only_probes(systemd):
    """Runs the stand-in systemctl: a dry run may probe but never start."""
    report = run([{"service": "nginx", "running": True}], systemd.root, dry_run=True)
    assert report.by_id()["service:nginx"].diff == "systemctl start nginx\n"
    assert systemd.log() == ["is-active --quiet nginx"]


@pytest.mark.parametrize("reload,verb", [(False, "restart"), (True, "reload")])
def test_changed_config_restarts_or_reloads_the_notified_service(systemd, reload, verb):
    """Runs the stand-in systemctl: a notify sends exactly one restart (or reload)."""
    root = systemd.root
    systemd.set("active-nginx")
    res = [
        {"file": "/etc/nginx.conf", "content": "a\n", "notify": "service:nginx"},
        {"service": "nginx", "running": True, "reload": reload},
    ]
    report = run(res, root)
    assert statuses(report) == {"file:/etc/nginx.conf": "changed", "service:nginx": "changed"}
    assert systemd.log() == ["is-active --quiet nginx", f"{verb} nginx"]
    run(res, root)
    assert systemd.log() == ["is-active --quiet nginx"]


def test_service_with_unmanaged_run_state_gets_try_restart(systemd):
    """Runs the stand-in systemctl: no probe of the run state, a try-restart on notify."""
    res = [
        {"file": "/etc/app.conf", "content": "a\n", "notify": "service:app"},
        {"service": "app", "enabled": True},
    ]
    systemd.set("enabled-app")
    run(res, systemd.root)
    assert systemd.log() == [f"--root={systemd.root} is-enabled --quiet app", "try-restart app"]


def test_service_started_by_this_converge_is_not_restarted_again(systemd):
    """Runs the stand-in systemctl: start already loads the new config."""
    res = [
        {"file": "/etc/nginx.conf", "content": "a\n", "notify": "service:nginx"},
        {"service": "nginx", "running": True},
    ]
    run(res, systemd.root)
    assert systemd.log() == ["is-active --quiet nginx", "start nginx"]


def test_stopped_service_is_stopped(systemd):
    """Runs the stand-in systemctl: running: false stops an active unit."""
    systemd.set("active-cups")
    run([{"service": "cups", "running": False}], systemd.root)
    assert systemd.log() == ["is-active --quiet cups", "stop cups"]


# ---------------------------------------------------------------- apt / dpkg


def build_deb(workdir: Path, name: str, version: str) -> Path:
    pkg = workdir / f"{name}-{version}"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "usr/share" / name).mkdir(parents=True)
    (pkg / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: Test <test@example.invalid>\nDescription: test package\n"
    )
    (pkg / "usr/share" / name / "VERSION").write_text(version + "\n")
    out = workdir / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(pkg), str(out)], check=True, capture_output=True)
    return out


def dpkg_status(root: Path, name: str) -> str:
    res = subprocess.run(
        ["dpkg-query", "--admindir", str(root / "var/lib/dpkg"), "-W", "-f", "${Status} ${Version}", name],
        capture_output=True, text=True,
    )
    return res.stdout if res.returncode == 0 else ""


needs_dpkg = pytest.mark.skipif(not (IS_ROOT and shutil.which("dpkg")), reason="installing a .deb into a root needs dpkg and root")


@needs_dpkg
def test_deb_is_installed_upgraded_and_removed_under_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "pkgs").mkdir(parents=True)
    for version in ("1.0", "1.1"):
        shutil.copy(build_deb(tmp_path, "gvtestpkg", version), root / "pkgs")
    res = {"package": "gvtestpkg", "source": "/pkgs/gvtestpkg_1.0_all.deb"}

    first = run([res], root)
    assert statuses(first) == {"package:gvtestpkg": "changed"}, first.to_json()
    assert dpkg_status(root, "gvtestpkg") == "install ok installed 1.0"
    assert (root / "usr/share/gvtestpkg/VERSION").read_text() == "1.0\n"

    second = run([res], root)
    assert second.by_id()["package:gvtestpkg"].reason == "installed (1.0)"

    upgrade = run([{**res, "source": "/pkgs/gvtestpkg_1.1_all.deb"}], root)
    assert upgrade.by_id()["package:gvtestpkg"].changes == ("version 1.0 -> 1.1",)
    assert dpkg_status(root, "gvtestpkg") == "install ok installed 1.1"

    removed = run([{"package": "gvtestpkg", "ensure": "absent"}], root)
    assert statuses(removed) == {"package:gvtestpkg": "changed"}
    assert not (root / "usr/share/gvtestpkg/VERSION").exists()
    assert "installed" not in dpkg_status(root, "gvtestpkg").replace("not-installed", "")
    assert run([{"package": "gvtestpkg", "ensure": "absent"}], root).changed == 0


def test_named_apt_package_under_a_root_plans_these_commands(tmp_path):
    report = run([{"package": "nginx", "version": "1.22.1-9"}], tmp_path, dry_run=True)
    admin = f"{tmp_path}/var/lib/dpkg"
    assert report.by_id()["package:nginx"].diff == (
        "apt-get install -y -q --no-install-recommends --allow-downgrades"
        f" -o Dir::State::status={admin}/status -o DPkg::Options::=--root={tmp_path}"
        " -o DPkg::Options::=--force-script-chrootless nginx=1.22.1-9\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_named_apt_package_on_the_host_plans_apt_get(tmp_path):
    report = converge([bundle([{"package": "gv-surely-not-installed"}])], root=Path("/"), facts=FACTS, dry_run=True)
    assert report.by_id()["package:gv-surely-not-installed"].diff == (
        "apt-get install -y -q --no-install-recommends gv-surely-not-installed\n"
    )


# ---------------------------------------------------------------- pip


def build_wheel(workdir: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel, written by hand (no build backend, no network)."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: grapevine-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    out = workdir / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return out


def make_venv(path: Path) -> Path:
    """A virtual environment that borrows the base interpreter's pip (fast), or has its own."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", "--system-site-packages", str(path)], check=True)
    python = path / "bin/python"
    if subprocess.run([str(python), "-m", "pip", "--version"], capture_output=True).returncode != 0:
        shutil.rmtree(path)
        subprocess.run([base, "-m", "venv", str(path)], check=True)
    return python


def test_pip_package_is_installed_into_the_virtualenv_and_removed(tmp_path):
    root = tmp_path / "root"
    (root / "pkgs").mkdir(parents=True)
    shutil.copy(build_wheel(tmp_path, "gvtinypkg", "1.0"), root / "pkgs")
    python = make_venv(root / "venv")
    res = {"package": "gvtinypkg", "provider": "pip", "virtualenv": "/venv", "source": "/pkgs/gvtinypkg-1.0-py3-none-any.whl"}

    plan = run([res], root, dry_run=True)
    assert f"{python} -m pip --disable-pip-version-check --no-input install --quiet --no-index --no-deps {root}/pkgs/" in plan.by_id()["package:gvtinypkg"].diff

    first = run([res], root)
    assert statuses(first) == {"package:gvtinypkg": "changed"}, first.to_json()
    out = subprocess.run([str(python), "-c", "import gvtinypkg; print(gvtinypkg.VERSION)"], capture_output=True, text=True)
    assert out.stdout == "1.0\n"

    second = run([res], root)
    assert second.by_id()["package:gvtinypkg"].reason == "installed (1.0)"

    removed = run([{"package": "gvtinypkg", "provider": "pip", "virtualenv": "/venv", "ensure": "absent"}], root)
    assert statuses(removed) == {"package:gvtinypkg": "changed"}
    gone = subprocess.run([str(python), "-c", "import gvtinypkg"], capture_output=True)
    assert gone.returncode != 0


# ---------------------------------------------------------------- user / group


needs_shadow = pytest.mark.skipif(
    not (IS_ROOT and shutil.which("useradd") and shutil.which("groupadd")), reason="useradd --prefix needs root"
)


def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@needs_shadow
def test_users_and_groups_are_managed_under_the_root_only(tmp_path):
    host = {p: _digest(p) for p in ("/etc/passwd", "/etc/group")}
    root = tmp_path
    res = [
        {"group": "gvweb", "gid": 23450},
        {"user": "gvapp", "uid": 23451, "group": "gvweb", "groups": ["gvweb"], "home": "/srv/app",
         "shell": "/bin/sh", "comment": "App user", "require": "group:gvweb"},
        {"file": "/srv/app/owned", "content": "x\n", "owner": "gvapp", "group": "gvweb", "require": "user:gvapp"},
    ]
    first = run(res, root)
    assert first.changed == 3, first.to_json()
    passwd = (root / "etc/passwd").read_text()
    assert "gvapp:x:23451:23450:App user:/srv/app:/bin/sh" in passwd
    assert "gvweb:x:23450:gvapp" in (root / "etc/group").read_text()
    st = (root / "srv/app/owned").stat()
    assert (st.st_uid, st.st_gid) == (23451, 23450)
    assert {p: _digest(p) for p in host} == host, "the host's account files were touched"

    assert run(res, root).changed == 0

    res[1]["shell"] = "/bin/bash"
    modified = run(res, root)
    assert modified.by_id()["user:gvapp"].changes == ("shell '/bin/sh' -> '/bin/bash'",)
    assert "gvapp:x:23451:23450:App user:/srv/app:/bin/bash" in (root / "etc/passwd").read_text()

    gone = run([{"user": "gvapp", "ensure": "absent"}, {"group": "gvweb", "ensure": "absent", "require": "user:gvapp"}], root)
    assert gone.changed == 2, gone.to_json()
    assert "gvapp" not in (root / "etc/passwd").read_text()
    assert "gvweb" not in (root / "etc/group").read_text()
    assert {p: _digest(p) for p in host} == host


def test_user_plan_lists_the_useradd_command(tmp_path):
    report = run([{"user": "gvplan", "uid": 3000, "system": True}], tmp_path, dry_run=True)
    assert report.by_id()["user:gvplan"].diff == f"useradd --prefix {tmp_path} --uid 3000 --system gvplan\n"
    assert list(tmp_path.iterdir()) == []


def test_owner_that_does_not_exist_under_the_root_fails_that_resource(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    report = run([{"file": "/data", "content": "", "owner": "nobody-here"}], tmp_path)
    assert report.by_id()["file:/data"].status == "failed"
    assert "no user named 'nobody-here'" in report.by_id()["file:/data"].error
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------- files


FILE_CASES = [
    # (resource, files, setup, expected status, check(root))
    ({"file": "/a", "content": "x"}, {}, None, "changed", lambda r: (r / "a").read_bytes() == b"x"),
    ({"file": "/a", "content": "x"}, {}, lambda r: (r / "a").write_bytes(b"x"), "unchanged", lambda r: True),
    ({"file": "/a"}, {}, None, "changed", lambda r: (r / "a").read_bytes() == b""),
    ({"file": "/a", "mode": "0600"}, {}, lambda r: (r / "a").write_bytes(b"keep"), "changed",
     lambda r: (r / "a").read_bytes() == b"keep" and (r / "a").stat().st_mode & 0o777 == 0o600),
    ({"file": "/a", "source": "blob.bin"}, {"blob.bin": b"\x00\x01\x02"}, None, "changed", lambda r: (r / "a").read_bytes() == b"\x00\x01\x02"),
    ({"file": "/a", "source": "plain.txt"}, {"plain.txt": "{{ not a template }}"}, None, "changed",
     lambda r: (r / "a").read_text() == "{{ not a template }}"),
    ({"file": "/a", "source": "t.j2"}, {"t.j2": "{{ facts.os }}/{{ name }}"}, None, "changed", lambda r: (r / "a").read_text() == "debian/n1"),
    ({"file": "/a", "source": "t.j2", "template": False}, {"t.j2": "{{ x }}"}, None, "changed", lambda r: (r / "a").read_text() == "{{ x }}"),
    ({"file": "/d/a", "content": "x"}, {}, lambda r: (r / "d/a").mkdir(parents=True), "failed", lambda r: (r / "d/a").is_dir()),
    ({"directory": "/d/e/f", "mode": "0700"}, {}, None, "changed", lambda r: (r / "d/e/f").stat().st_mode & 0o777 == 0o700),
    ({"directory": "/d", "ensure": "absent"}, {}, lambda r: (r / "d/x").mkdir(parents=True), "failed", lambda r: (r / "d/x").is_dir()),
    ({"directory": "/d", "ensure": "absent", "force": True}, {}, lambda r: (r / "d/x").mkdir(parents=True), "changed", lambda r: not (r / "d").exists()),
    ({"symlink": "/l", "to": "target"}, {}, lambda r: (r / "l").write_text("file"), "changed", lambda r: os.readlink(r / "l") == "target"),
    ({"symlink": "/l", "to": "target"}, {}, lambda r: (r / "l").mkdir(), "failed", lambda r: (r / "l").is_dir()),
    ({"symlink": "/l", "ensure": "absent"}, {}, lambda r: os.symlink("x", r / "l"), "changed", lambda r: not os.path.lexists(r / "l")),
    ({"symlink": "/l", "ensure": "absent"}, {}, lambda r: (r / "l").write_text("f"), "failed", lambda r: (r / "l").is_file()),
]


@pytest.mark.parametrize("res,files,setup,expected,check", FILE_CASES)
def test_filesystem_resources_table(tmp_path, res, files, setup, expected, check):
    if setup:
        setup(tmp_path)
    report = converge([bundle([res], files=files)], root=tmp_path, facts=FACTS)
    (result,) = report.resources
    assert result.status == expected, result
    assert check(tmp_path)
    if expected == "changed":
        assert converge([bundle([res], files=files)], root=tmp_path, facts=FACTS).changed == 0


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="needs the systemctl binary (no running systemd needed)")
def test_service_enabled_under_a_root_with_the_real_systemctl(tmp_path):
    """Real systemctl --root edits unit symlinks offline; run state is not managed here."""
    unit = "[Unit]\nDescription=test\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"
    res = [
        {"file": "/etc/systemd/system/gvunit.service", "content": unit},
        {"service": "gvunit", "enabled": True, "require": "file:/etc/systemd/system/gvunit.service"},
    ]
    first = run(res, tmp_path)
    assert statuses(first) == {"file:/etc/systemd/system/gvunit.service": "changed", "service:gvunit": "changed"}, first.to_json()
    assert os.path.islink(tmp_path / "etc/systemd/system/multi-user.target.wants/gvunit.service")
    second = run(res, tmp_path)
    assert second.by_id()["service:gvunit"].reason == "enabled"
    off = run([{**res[0]}, {**res[1], "enabled": False}], tmp_path)
    assert off.by_id()["service:gvunit"].changes == ("disable",)
    assert not os.path.lexists(tmp_path / "etc/systemd/system/multi-user.target.wants/gvunit.service")


@needs_shadow
def test_dry_run_does_not_fail_a_file_owned_by_a_user_it_has_not_created_yet(tmp_path):
    res = [
        {"user": "gvlater", "uid": 23460},
        {"file": "/owned", "content": "x\n", "owner": "gvlater", "require": "user:gvlater"},
    ]
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    plan = run(res, tmp_path, dry_run=True)
    assert statuses(plan) == {"user:gvlater": "changed", "file:/owned": "skipped"}
    assert "cannot be checked before the planned change to user:gvlater" in plan.by_id()["file:/owned"].reason
    assert not (tmp_path / "owned").exists()
    assert statuses(run(res, tmp_path)) == {"user:gvlater": "changed", "file:/owned": "changed"}
    assert (tmp_path / "owned").stat().st_uid == 23460
