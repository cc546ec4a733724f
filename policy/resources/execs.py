"""``exec`` resource: run a command when its guards say so.

``command`` is an argument list (run directly) or a string (run with
``/bin/sh -c``). Guards, checked in this order, make it idempotent:

- ``creates: PATH`` — converged when PATH exists (under the root);
- ``onlyif: CMD`` — run only when CMD exits 0;
- ``unless: CMD`` — run only when CMD exits non-zero.

Guard commands are probes: they run during the read-only check (also in a
dry run), so they must not change anything. ``refresh_only: true`` runs the
command only when a resource that notifies it changed in this converge; a
notify also re-runs an ordinary exec (guards still apply). ``cwd`` is a
path under the root; ``env`` adds variables; ``timeout`` is in seconds;
``returns`` lists the exit codes that count as success.
"""

from __future__ import annotations

import os
from typing import Any

from grapevine.gossip.errors import PolicyError

from .base import Attr, Change, Context, Converged, Resource, ResourceError, format_argv

# A converge must finish; a command that runs longer than this by default is
# either hung or belongs in a service. Policies may raise it per resource.
DEFAULT_EXEC_TIMEOUT_S = 300.0
# Upper bound on any timeout a policy may set (one day).
MAX_EXEC_TIMEOUT_S = 86_400.0


def _describe(command: Any) -> str:
    return command if isinstance(command, str) else format_argv(command)


class ExecResource(Resource):
    TYPE = "exec"
    REFRESHABLE = True
    ATTRS = {
        "command": Attr(kind="command", required=True),
        "creates": Attr(kind="path"),
        "onlyif": Attr(kind="command"),
        "unless": Attr(kind="command"),
        "timeout": Attr(kind="int", default=DEFAULT_EXEC_TIMEOUT_S),
        "cwd": Attr(kind="path"),
        "env": Attr(kind="dict"),
        "refresh_only": Attr(kind="bool", default=False),
        "returns": Attr(kind="list", default=("0",)),
    }
    __slots__ = ()

    @classmethod
    def validate_combination(cls, name: str, attrs: dict[str, Any]) -> None:
        if not 0 < float(attrs["timeout"]) <= MAX_EXEC_TIMEOUT_S:
            raise PolicyError(f"attribute 'timeout' must be between 0 and {MAX_EXEC_TIMEOUT_S:g} seconds")
        for code in attrs["returns"]:
            if not code.lstrip("-").isdigit():
                raise PolicyError(f"attribute 'returns' must list exit codes, not {code!r}")

    def _run(self, ctx: Context, command: Any) -> Any:
        cwd = ctx.path(self.attrs["cwd"], follow=True) if self.attrs["cwd"] else None
        if cwd is not None and not os.path.isdir(cwd):
            raise ResourceError(f"cwd {self.attrs['cwd']} is not a directory under {ctx.root}")
        env = dict(self.attrs["env"] or {})
        env.setdefault("GRAPEVINE_ROOT", str(ctx.root))
        if isinstance(command, str):
            return ctx.run([command], shell=True, timeout=float(self.attrs["timeout"]), env=env, cwd=cwd)
        return ctx.run(list(command), timeout=float(self.attrs["timeout"]), env=env, cwd=cwd)

    def _guards(self, ctx: Context) -> str | None:
        a = self.attrs
        if a["creates"] is not None and os.path.lexists(ctx.path(a["creates"])):
            return f"{a['creates']} exists"
        if a["onlyif"] is not None:
            res = self._run(ctx, a["onlyif"])
            if res.returncode != 0:
                return f"onlyif exited {res.returncode}"
        if a["unless"] is not None:
            res = self._run(ctx, a["unless"])
            if res.returncode == 0:
                return "unless exited 0"
        return None

    def _change(self, why: str) -> Change:
        line = _describe(self.attrs["command"])
        return Change(summary=(f"run{why}: {line}",), diff=f"run: {line}\n", data="run")

    def check(self, ctx: Context) -> Change | Converged:
        if self.attrs["refresh_only"]:
            return Converged(reason="refresh-only and not notified")
        skip = self._guards(ctx)
        if skip is not None:
            return Converged(reason=skip)
        return self._change("")

    def refresh(self, ctx: Context, *, just_changed: Change | None = None) -> Change | None:
        if just_changed is not None:
            return None  # it already ran in this converge
        if self._guards(ctx) is not None:
            return None
        return self._change(" (notified)")

    def apply(self, ctx: Context, change: Change) -> str:
        res = self._run(ctx, self.attrs["command"])
        if str(res.returncode) not in self.attrs["returns"]:
            tail = res.output()[-1000:]
            raise ResourceError(f"{_describe(self.attrs['command'])} exited {res.returncode}" + (f": {tail}" if tail else ""))
        return res.output()
