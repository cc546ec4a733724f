"""``service`` resource, systemd provider (``systemctl``).

Unit-file state (enabled/disabled) honours the converge root with
``systemctl --root=ROOT``, which edits the unit symlinks under the root
without a running manager. Run state (active, start, stop, restart) belongs
to the running service manager of this machine, which has no notion of a
root, so those commands are always sent to it as they are.

A notify from a changed resource restarts the service (``reload`` when the
resource says ``reload: true``), unless this converge just started it; when
``running`` is not managed, ``try-restart`` leaves a stopped service stopped.
"""

from __future__ import annotations

import re
from typing import Any

from grapevine.gossip.errors import PolicyError

from .base import PROBE_TIMEOUT_S, Attr, Change, Context, Converged, Resource, format_argv

_UNIT = re.compile(r"^[A-Za-z0-9:_.@\\-]+$")
SYSTEMCTL = "systemctl"


class ServiceResource(Resource):
    TYPE = "service"
    REFRESHABLE = True
    ATTRS = {
        "running": Attr(kind="bool"),
        "enabled": Attr(kind="bool"),
        "reload": Attr(kind="bool", default=False),  # a notify reloads instead of restarting
        "provider": Attr(kind="str", default="systemd", choices=("systemd",)),
    }
    __slots__ = ()

    @classmethod
    def validate_combination(cls, name: str, attrs: dict[str, Any]) -> None:
        if not _UNIT.match(name):
            raise PolicyError(f"{name!r} is not a valid systemd unit name")

    def _root_opts(self, ctx: Context) -> list[str]:
        return [f"--root={ctx.root}"] if ctx.rooted else []

    def _is_active(self, ctx: Context) -> bool:
        res = ctx.run([SYSTEMCTL, "is-active", "--quiet", self.name], timeout=PROBE_TIMEOUT_S)
        return res.returncode == 0

    def _is_enabled(self, ctx: Context) -> bool:
        res = ctx.run([SYSTEMCTL, *self._root_opts(ctx), "is-enabled", "--quiet", self.name], timeout=PROBE_TIMEOUT_S)
        return res.returncode == 0

    def check(self, ctx: Context) -> Change | Converged:
        a = self.attrs
        commands: list[list[str]] = []
        summary: list[str] = []
        reasons: list[str] = []
        if a["enabled"] is not None:
            enabled = self._is_enabled(ctx)
            if enabled != a["enabled"]:
                verb = "enable" if a["enabled"] else "disable"
                commands.append([SYSTEMCTL, *self._root_opts(ctx), verb, self.name])
                summary.append(verb)
            else:
                reasons.append("enabled" if enabled else "disabled")
        if a["running"] is not None:
            active = self._is_active(ctx)
            if active != a["running"]:
                verb = "start" if a["running"] else "stop"
                commands.append([SYSTEMCTL, verb, self.name])
                summary.append(verb)
            else:
                reasons.append("running" if active else "stopped")
        if not commands:
            return Converged(reason=" and ".join(reasons) or "nothing to manage")
        return Change(summary=tuple(summary), diff="".join(format_argv(c) + "\n" for c in commands), data=commands)

    def apply(self, ctx: Context, change: Change) -> str:
        out = [ctx.must(argv, timeout=PROBE_TIMEOUT_S * 5).output() for argv in change.data]
        return "\n".join(o for o in out if o)

    def refresh(self, ctx: Context, *, just_changed: Change | None = None) -> Change | None:
        if self.attrs["running"] is False:
            return None
        if just_changed is not None and any(c[1:2] == ["start"] for c in just_changed.data):
            return None  # freshly started: already running the new configuration
        if self.attrs["running"]:
            verb = "reload" if self.attrs["reload"] else "restart"
        else:  # run state not managed: refresh it only if it is running
            verb = "try-reload-or-restart" if self.attrs["reload"] else "try-restart"
        argv = [SYSTEMCTL, verb, self.name]
        return Change(summary=(verb,), diff=format_argv(argv) + "\n", data=[argv])
