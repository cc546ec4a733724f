"""Account resources: ``user`` and ``group`` (shadow-utils providers).

State is read straight from ``<root>/etc/passwd`` and ``<root>/etc/group``
(owner lookups use the system's name service with root ``/`` or when the
root has no account file of its own),
and changed with ``useradd``/``usermod``/``userdel`` and
``groupadd``/``groupmod``/``groupdel``, passing ``--prefix ROOT`` when a root
is configured so the account files under the root are the ones edited and
the host's /etc is never touched.
"""

from __future__ import annotations

import os
from typing import Any

from grapevine.gossip.errors import PolicyError

from .base import Attr, Change, Context, Converged, Resource, ResourceError, format_argv

ENSURE = ("present", "absent")
# Files shadow-utils expects to exist under a --prefix root (it only edits).
ACCOUNT_FILES = (("etc/passwd", 0o644), ("etc/group", 0o644), ("etc/shadow", 0o640), ("etc/gshadow", 0o640))


def _read_db(ctx: Context, rel: str) -> dict[str, list[str]]:
    key = "accounts:" + rel
    db = ctx.cache.get(key)
    if db is None:
        db = {}
        try:
            with open(os.path.join(str(ctx.root), rel), encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    fields = line.rstrip("\n").split(":")
                    if fields and fields[0] and not fields[0].startswith(("#", "+", "-")):
                        db[fields[0]] = fields
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ResourceError(f"cannot read {rel} under {ctx.root}: {exc.strerror}") from None
        ctx.cache[key] = db
    return db


def forget_accounts(ctx: Context) -> None:
    """Drop cached account databases after a change to them."""
    for key in [k for k in ctx.cache if k.startswith("accounts:")]:
        del ctx.cache[key]


def _lookup(ctx: Context, name: str, rel: str, kind: str) -> int:
    if name.isdigit():
        return int(name)
    if not ctx.rooted or not os.path.exists(os.path.join(str(ctx.root), rel)):
        # No account database under the root (a bare test or image root):
        # names mean what they mean on this machine.
        import grp
        import pwd

        try:
            return pwd.getpwnam(name).pw_uid if kind == "user" else grp.getgrnam(name).gr_gid
        except KeyError:
            raise ResourceError(f"no {kind} named {name!r} on this node") from None
    entry = _read_db(ctx, rel).get(name)
    if entry is None or len(entry) < 3 or not entry[2].isdigit():
        raise ResourceError(f"no {kind} named {name!r} in {os.path.join(str(ctx.root), rel)}")
    return int(entry[2])


def lookup_uid(ctx: Context, name: str) -> int:
    return _lookup(ctx, name, "etc/passwd", "user")


def lookup_gid(ctx: Context, name: str) -> int:
    return _lookup(ctx, name, "etc/group", "group")


def _prefix(ctx: Context) -> list[str]:
    return ["--prefix", str(ctx.root)] if ctx.rooted else []


def _ensure_account_files(ctx: Context) -> None:
    if not ctx.rooted:
        return
    for rel, mode in ACCOUNT_FILES:
        path = os.path.join(str(ctx.root), rel)
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            os.close(fd)


def _run_all(ctx: Context, commands: list[list[str]]) -> str:
    _ensure_account_files(ctx)
    out = []
    try:
        for argv in commands:
            res = ctx.must(argv)
            out.append(res.output())
    finally:
        forget_accounts(ctx)
    return "\n".join(o for o in out if o)


class GroupResource(Resource):
    TYPE = "group"
    ATTRS = {
        "ensure": Attr(kind="str", default="present", choices=ENSURE),
        "gid": Attr(kind="int"),
        "system": Attr(kind="bool", default=False),
    }
    __slots__ = ()

    def check(self, ctx: Context) -> Change | Converged:
        entry = _read_db(ctx, "etc/group").get(self.name)
        p = _prefix(ctx)
        if self.attrs["ensure"] == "absent":
            if entry is None:
                return Converged(reason="absent")
            argv = ["groupdel", *p, self.name]
            return Change(summary=("remove group",), diff=format_argv(argv) + "\n", data=[argv])
        gid = self.attrs["gid"]
        if entry is None:
            argv = ["groupadd", *p]
            if gid is not None:
                argv += ["--gid", str(int(gid))]
            if self.attrs["system"]:
                argv.append("--system")
            argv.append(self.name)
            return Change(summary=("create group",), diff=format_argv(argv) + "\n", data=[argv])
        if gid is not None and entry[2] != str(int(gid)):
            argv = ["groupmod", *p, "--gid", str(int(gid)), self.name]
            return Change(summary=(f"gid {entry[2]} -> {int(gid)}",), diff=format_argv(argv) + "\n", data=[argv])
        return Converged(reason="group exists with the given gid" if gid is not None else "group exists")

    def apply(self, ctx: Context, change: Change) -> str:
        return _run_all(ctx, change.data)


class UserResource(Resource):
    TYPE = "user"
    ATTRS = {
        "ensure": Attr(kind="str", default="present", choices=ENSURE),
        "uid": Attr(kind="int"),
        "group": Attr(kind="str"),  # primary group, name or number
        "groups": Attr(kind="list"),  # supplementary groups (exact set)
        "home": Attr(kind="path"),
        "shell": Attr(kind="path"),
        "comment": Attr(kind="str"),
        "system": Attr(kind="bool", default=False),
    }
    __slots__ = ()

    @classmethod
    def validate_combination(cls, name: str, attrs: dict[str, Any]) -> None:
        comment = attrs["comment"]
        if comment is not None and (":" in comment or "\n" in comment):
            raise PolicyError("attribute 'comment' must not contain ':' or a newline")

    def _groups_of(self, ctx: Context) -> set[str]:
        return {n for n, f in _read_db(ctx, "etc/group").items() if len(f) > 3 and self.name in f[3].split(",")}

    def check(self, ctx: Context) -> Change | Converged:
        entry = _read_db(ctx, "etc/passwd").get(self.name)
        p = _prefix(ctx)
        a = self.attrs
        if a["ensure"] == "absent":
            if entry is None:
                return Converged(reason="absent")
            argv = ["userdel", *p, self.name]
            return Change(summary=("remove user",), diff=format_argv(argv) + "\n", data=[argv])
        opts: list[str] = []
        summary: list[str] = []
        entry = entry + [""] * (7 - len(entry)) if entry is not None else None

        def want(flag: str, value: Any, current: str | None, label: str) -> None:
            if value is None:
                return
            if current is None or current != str(value):
                opts.extend([flag, str(value)])
                if current is not None:
                    summary.append(f"{label} {current!r} -> {str(value)!r}")

        want("--uid", int(a["uid"]) if a["uid"] is not None else None, entry[2] if entry else None, "uid")
        if a["group"] is not None:
            gid = str(lookup_gid(ctx, a["group"])) if not a["group"].isdigit() else a["group"]
            if entry is None or entry[3] != gid:
                opts.extend(["--gid", a["group"]])
                if entry is not None:
                    summary.append(f"primary group {entry[3]} -> {gid}")
        want("--home", a["home"], entry[5] if entry else None, "home")
        want("--shell", a["shell"], entry[6] if entry else None, "shell")
        want("--comment", a["comment"], entry[4] if entry else None, "comment")
        if a["groups"] is not None:
            current = self._groups_of(ctx) if entry is not None else set()
            if entry is None or current != set(a["groups"]):
                opts.extend(["--groups", ",".join(a["groups"])])
                if entry is not None:
                    summary.append(f"groups {sorted(current)} -> {sorted(a['groups'])}")
        if entry is None:
            argv = ["useradd", *p, *opts, *(["--system"] if a["system"] else []), self.name]
            return Change(summary=("create user",), diff=format_argv(argv) + "\n", data=[argv])
        if not opts:
            return Converged(reason="user exists with the given attributes")
        argv = ["usermod", *p, *opts, self.name]
        return Change(summary=tuple(summary), diff=format_argv(argv) + "\n", data=[argv])

    def apply(self, ctx: Context, change: Change) -> str:
        return _run_all(ctx, change.data)
