"""``package`` resource with two providers: ``apt`` (default) and ``pip``.

apt: the installed set is read once per converge with one ``dpkg-query``
over the dpkg database (``--admindir ROOT/var/lib/dpkg`` under a root), so
a thousand packages cost one process. Installing a named package uses
``apt-get install``; a ``source`` .deb file is installed with ``dpkg -i``
(``dpkg --root ROOT`` under a root, which also sets the admin dir).

pip: the installed distributions are read from the ``*.dist-info``
directories on the interpreter's ``sys.path`` (asked once per interpreter),
and changed with ``python -m pip install/uninstall``. ``virtualenv`` names
the environment (a path under the root); otherwise ``python3`` is used.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from grapevine.gossip.errors import PolicyError

from .base import DEFAULT_COMMAND_TIMEOUT_S, PROBE_TIMEOUT_S, Attr, Change, Context, Converged, Resource, ResourceError, format_argv

# No "latest": checking it needs the repository's candidate version, and a
# check that always plans an upgrade would break "a second converge changes
# nothing". Pin `version` to move a package forward.
ENSURE = ("present", "absent")
PROVIDERS = ("apt", "pip")
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
# Files dpkg needs in an admin dir before it will install into a fresh root.
DPKG_ADMIN_DIRS = ("updates", "info", "triggers")
_DEB_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_PIP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------- apt / dpkg


def _admindir(ctx: Context) -> str:
    return ctx.path("/var/lib/dpkg", follow=True)


def dpkg_installed(ctx: Context) -> dict[str, str]:
    """package -> version of every installed package (one dpkg-query per converge)."""
    cached = ctx.cache.get("dpkg")
    if cached is not None:
        return cached
    argv = ["dpkg-query", "--admindir", _admindir(ctx), "-W", "-f", "${Package}\t${Status}\t${Version}\n"]
    res = ctx.run(argv, timeout=PROBE_TIMEOUT_S)
    if res.returncode not in (0, 1):
        raise ResourceError(f"{format_argv(argv)} exited {res.returncode}: {res.output()[-300:]}")
    out: dict[str, str] = {}
    for line in res.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1].endswith(" installed") and parts[1].startswith("install "):
            out[parts[0].split(":")[0]] = parts[2]
    ctx.cache["dpkg"] = out
    return out


def _deb_field(ctx: Context, deb: str, field: str) -> str:
    res = ctx.run(["dpkg-deb", "--field", deb, field], timeout=PROBE_TIMEOUT_S)
    if res.returncode != 0:
        raise ResourceError(f"{deb} is not a readable .deb: {res.output()[-300:]}")
    return res.stdout.strip()


def _prepare_admindir(ctx: Context) -> None:
    if not ctx.rooted:
        return
    admin = _admindir(ctx)
    for sub in DPKG_ADMIN_DIRS:
        os.makedirs(os.path.join(admin, sub), exist_ok=True)
    status = os.path.join(admin, "status")
    if not os.path.exists(status):
        open(status, "ab").close()


def apt_commands(ctx: Context, res: "PackageResource", action: str, deb: str | None) -> list[list[str]]:
    """The exact commands apt/dpkg would be run with for ``action``."""
    name, version = res.name, res.attrs["version"]
    root_opts = ["--root", str(ctx.root)] if ctx.rooted else []
    if action == "remove":
        if ctx.rooted:
            return [["dpkg", *root_opts, "--remove", name]]
        return [["apt-get", "remove", "-y", "-q", name]]
    if deb is not None:
        return [["dpkg", *root_opts, "--force-script-chrootless", "-i", deb] if ctx.rooted else ["dpkg", "-i", deb]]
    spec = f"{name}={version}" if version else name
    argv = ["apt-get", "install", "-y", "-q", "--no-install-recommends"]
    if version:
        argv.append("--allow-downgrades")  # a pinned version may be older than the installed one
    if ctx.rooted:
        admin = _admindir(ctx)
        argv += [
            "-o", f"Dir::State::status={admin}/status",
            "-o", f"DPkg::Options::=--root={ctx.root}",
            "-o", "DPkg::Options::=--force-script-chrootless",
        ]
    return [argv + [spec]]


# ---------------------------------------------------------------- pip


def _python(ctx: Context, res: "PackageResource") -> str:
    venv = res.attrs["virtualenv"]
    if venv is not None:
        return os.path.join(ctx.path(venv, follow=True), "bin", "python")
    return "python3"


def _site_dirs(ctx: Context, python: str) -> list[str]:
    key = "pip-path:" + python
    dirs = ctx.cache.get(key)
    if dirs is None:
        if python != "python3" and not os.path.exists(python):
            dirs = []
        else:
            res = ctx.run([python, "-c", "import json, sys; print(json.dumps(sys.path))"], timeout=PROBE_TIMEOUT_S)
            if res.returncode != 0:
                raise ResourceError(f"cannot ask {python} for its search path: {res.output()[-300:]}")
            dirs = [d for d in json.loads(res.stdout) if d and os.path.isdir(d)]
        ctx.cache[key] = dirs
    return dirs


def pip_installed(ctx: Context, python: str) -> dict[str, str]:
    """normalised distribution name -> version, from *.dist-info directories."""
    key = "pip:" + python
    cached = ctx.cache.get(key)
    if cached is not None:
        return cached
    out: dict[str, str] = {}
    for d in _site_dirs(ctx, python):
        try:
            entries = os.listdir(d)
        except OSError:
            continue
        for entry in entries:
            if not entry.endswith(".dist-info"):
                continue
            stem = entry[: -len(".dist-info")]
            dist, _, version = stem.partition("-")
            name = _normalise(dist)
            if name not in out:
                out[name] = version
    ctx.cache[key] = out
    return out


def pip_commands(ctx: Context, res: "PackageResource", action: str) -> list[list[str]]:
    python = _python(ctx, res)
    base = [python, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    if action == "remove":
        return [base + ["uninstall", "-y", res.name]]
    argv = base + ["install", "--quiet"]
    if res.attrs["source"] is not None:
        argv += ["--no-index", "--no-deps", ctx.path(res.attrs["source"], follow=True)] if res.attrs["source"].startswith("/") else [res.attrs["source"]]
    else:
        version = res.attrs["version"]
        argv.append(f"{res.name}=={version}" if version else res.name)
    return [argv]


# ---------------------------------------------------------------- resource


class PackageResource(Resource):
    TYPE = "package"
    ATTRS = {
        "ensure": Attr(kind="str", default="present", choices=ENSURE),
        "provider": Attr(kind="str", default="apt", choices=PROVIDERS),
        "version": Attr(kind="str"),
        "source": Attr(kind="str"),  # a .deb / wheel / sdist path (under the root) or, for pip, a URL
        "virtualenv": Attr(kind="path"),  # pip only
    }
    __slots__ = ()

    @classmethod
    def validate_combination(cls, name: str, attrs: dict[str, Any]) -> None:
        pattern = _DEB_NAME if attrs["provider"] == "apt" else _PIP_NAME
        if not pattern.match(name):
            raise PolicyError(f"{name!r} is not a valid {attrs['provider']} package name")
        if attrs["virtualenv"] is not None and attrs["provider"] != "pip":
            raise PolicyError("attribute 'virtualenv' applies to provider: pip only")
        if attrs["provider"] == "apt" and attrs["source"] is not None and not attrs["source"].startswith("/"):
            raise PolicyError("attribute 'source' of an apt package must be an absolute path to a .deb")

    def _installed(self, ctx: Context) -> str | None:
        if self.attrs["provider"] == "apt":
            return dpkg_installed(ctx).get(self.name)
        return pip_installed(ctx, _python(ctx, self)).get(_normalise(self.name))

    def _want_version(self, ctx: Context) -> str | None:
        version = self.attrs["version"]
        if version is None and self.attrs["provider"] == "apt" and self.attrs["source"] is not None:
            deb = ctx.path(self.attrs["source"], follow=True)
            if not os.path.exists(deb):
                raise ResourceError(f"source {self.attrs['source']} does not exist under {ctx.root}")
            version = _deb_field(ctx, deb, "Version")
        return version

    def check(self, ctx: Context) -> Change | Converged:
        a = self.attrs
        current = self._installed(ctx)
        if a["ensure"] == "absent":
            if current is None:
                return Converged(reason="not installed")
            return self._plan(ctx, "remove", f"remove {current}")
        want = self._want_version(ctx)
        if current is None:
            return self._plan(ctx, "install", f"install {want}" if want else "install")
        if want is not None and current != want:
            return self._plan(ctx, "install", f"version {current} -> {want}")
        return Converged(reason=f"installed ({current})")

    def _plan(self, ctx: Context, action: str, summary: str) -> Change:
        if self.attrs["provider"] == "pip":
            commands = pip_commands(ctx, self, action)
        else:
            deb = ctx.path(self.attrs["source"], follow=True) if self.attrs["source"] is not None and action != "remove" else None
            commands = apt_commands(ctx, self, action, deb)
        return Change(summary=(summary,), diff="".join(format_argv(c) + "\n" for c in commands), data=commands)

    def apply(self, ctx: Context, change: Change) -> str:
        env = APT_ENV if self.attrs["provider"] == "apt" else None
        if self.attrs["provider"] == "apt":
            _prepare_admindir(ctx)
        out = []
        try:
            for argv in change.data:
                out.append(ctx.must(argv, env=env, timeout=DEFAULT_COMMAND_TIMEOUT_S).output())
        finally:
            for key in [k for k in ctx.cache if k == "dpkg" or k.startswith("pip:")]:
                del ctx.cache[key]
        return "\n".join(o for o in out if o)
