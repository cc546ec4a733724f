"""Run one command for a run order: a timeout, bounded output, a chosen user.

The command runs in a session (and so a process group) of its own. When the
timeout passes, the whole group gets SIGTERM and, after a short grace period,
SIGKILL, so a shell that started children leaves nothing behind. Output is
read as it comes; each stream keeps at most ``max_output`` bytes and counts
what it dropped, so a chatty command can neither fill the agent's memory nor
block on a full pipe.

The exit code follows the shell convention: the command's own status, or
``-signal`` when a signal ended it; ``TIMEOUT_EXIT`` when the timeout killed
it and ``START_FAILED_EXIT`` when it could not be started at all (no such
program, no such user), with the reason in ``error``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import signal
import subprocess
import time
from dataclasses import dataclass

from grapevine.gossip.wire import MAX_RUN_OUTPUT_BYTES

log = logging.getLogger("grapevine.node")

MAX_OUTPUT_BYTES = MAX_RUN_OUTPUT_BYTES  # per stream (gossip/wire.py): enough for a status page, small enough for one result
KILL_GRACE_S = 2.0  # between SIGTERM and SIGKILL: room for a clean exit, short against a deadline
TIMEOUT_EXIT = 124  # what timeout(1) reports, so operators read it the same way
START_FAILED_EXIT = 127  # what a shell reports for a command it cannot run
READ_CHUNK = 64 * 1024  # one read from an output pipe: the kernel's default pipe buffer
SHELL = "/bin/sh"  # POSIX shell for --shell actions; present on every supported system


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    duration_ms: int
    timed_out: bool = False
    stdout_dropped: int = 0  # bytes beyond max_output that were read and thrown away
    stderr_dropped: int = 0
    error: str = ""  # why the command could not run, or "timeout after N s"


class _Capture:
    """Collects one stream up to a limit and counts the rest."""

    __slots__ = ("limit", "parts", "size", "dropped")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.dropped = 0

    def feed(self, data: bytes) -> None:
        room = self.limit - self.size
        if room > 0:
            keep = data[:room]
            self.parts.append(keep)
            self.size += len(keep)
        self.dropped += max(0, len(data) - max(room, 0))

    def value(self) -> bytes:
        return b"".join(self.parts)


def _user_kwargs(user: str | None) -> dict:
    """Arguments that make the child run as ``user`` (needs root unless it is us)."""
    if not user:
        return {}
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise LookupError(f"no such user {user!r}") from None
    if pw.pw_uid == os.geteuid():
        return {}
    if os.geteuid() != 0:
        raise PermissionError(f"cannot run as {user!r}: the agent is not root")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": os.getgrouplist(user, pw.pw_gid)}


def _child_env(user: str | None) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "LANG": os.environ.get("LANG", "C.UTF-8")}
    try:
        pw = pwd.getpwnam(user) if user else pwd.getpwuid(os.geteuid())
        env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
    except KeyError:
        pass
    return env


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:  # the group now belongs to another user; kill what we can
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@dataclass(slots=True)
class _Child:
    pid: int
    readers: asyncio.Future  # both pipes drained (every holder closed them)
    exited: asyncio.Future  # the exit status, once the process ended
    pipes: list[_PipeWatch]

    def close_pipes(self) -> None:
        for pipe in self.pipes:
            pipe.close()


class _PipeWatch:
    """Reads one output pipe from the event loop; the descriptor is this object's alone.

    The loop's pipe transports are not used on purpose: uvloop's
    ``connect_read_pipe`` hands the descriptor number to libuv while the file
    object keeps it too, and on some teardown paths (a transport collected by
    the cyclic garbage collector) both close it; the second close can hit a
    descriptor another thread of the agent opened meanwhile (a file being
    converged, the state database). Here the pipe is read with ``add_reader``
    and ``os.read`` and closed exactly once, by ``close``.
    """

    __slots__ = ("loop", "fd", "capture", "done")

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, capture: _Capture) -> None:
        self.loop, self.fd, self.capture = loop, fd, capture
        self.done = loop.create_future()
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self.capture.feed(data)
        else:
            self.close()  # end of file: every holder of the write end is gone

    def close(self) -> None:
        if self.fd < 0:
            return
        self.loop.remove_reader(self.fd)
        os.close(self.fd)
        self.fd = -1
        if not self.done.done():
            self.done.set_result(None)


async def _start(argv: list[str], *, env: dict, cwd: str, user_kwargs: dict, out: _Capture, err: _Capture) -> _Child:
    """Start the command in a new session with both output pipes watched.

    ``subprocess.Popen`` starts it (vfork + exec when no user switch is
    asked for: no copy of the agent's page tables) and a pidfd tells the
    event loop when it exits, so no child watcher is involved and any loop
    works (uvloop's own subprocess API cannot switch users). Without pidfd
    support a worker thread waits for the exit instead. The output pipes are
    made here and only their read ends stay in the agent (``_PipeWatch``).
    """
    loop = asyncio.get_running_loop()
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    try:
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
    except OSError:
        os.close(out_r)
        os.close(out_w)
        raise
    try:
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w,
                                 start_new_session=True, cwd=cwd, env=env, **user_kwargs)
    except BaseException:
        for fd in (out_r, err_r):
            os.close(fd)
        raise
    finally:
        os.close(out_w)  # the child holds its own copies now
        os.close(err_w)
    exited: asyncio.Future
    try:
        pidfd = os.pidfd_open(popen.pid)
    except (AttributeError, OSError):
        exited = loop.run_in_executor(None, popen.wait)
    else:
        exited = loop.create_future()

        def on_exit() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            if not exited.done():
                exited.set_result(popen.wait())  # already a zombie: this only reaps it

        loop.add_reader(pidfd, on_exit)
    pipes = [_PipeWatch(loop, out_r, out), _PipeWatch(loop, err_r, err)]
    return _Child(pid=popen.pid, readers=asyncio.ensure_future(asyncio.gather(*(p.done for p in pipes))),
                  exited=exited, pipes=pipes)


async def execute(
    argv: list[str] | tuple[str, ...],
    *,
    timeout_s: float,
    user: str | None = None,
    cwd: str | None = None,
    max_output: int = MAX_OUTPUT_BYTES,
    env: dict[str, str] | None = None,
) -> ExecResult:
    """Run ``argv`` and return its outcome; never raises for a failing command."""
    if not argv:
        raise ValueError("an empty command line cannot be run")
    started = time.monotonic()

    def elapsed_ms() -> int:
        return int((time.monotonic() - started) * 1000)

    out, err = _Capture(max_output), _Capture(max_output)
    try:
        child = await _start(list(argv), env=env if env is not None else _child_env(user), cwd=cwd or "/",
                             user_kwargs=_user_kwargs(user), out=out, err=err)
    except (OSError, LookupError, ValueError, subprocess.SubprocessError) as exc:
        return ExecResult(exit_code=START_FAILED_EXIT, stdout=b"", stderr=b"", duration_ms=elapsed_ms(),
                          error=f"cannot start {argv[0]!r}: {exc}")

    timed_out = False
    code: int | None = None
    try:
        await asyncio.wait_for(asyncio.shield(child.readers), timeout_s)
        code = await asyncio.wait_for(asyncio.shield(child.exited), max(0.0, timeout_s - (time.monotonic() - started)))
    except asyncio.TimeoutError:
        timed_out = True
        _kill_group(child.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(child.exited), KILL_GRACE_S)
        except asyncio.TimeoutError:
            pass
        _kill_group(child.pid, signal.SIGKILL)  # also children that ignored SIGTERM or outlived the leader
        code = await child.exited
        try:  # the pipes close once every holder in the group is gone
            await asyncio.wait_for(child.readers, KILL_GRACE_S)
        except asyncio.TimeoutError:
            child.close_pipes()  # a holder escaped the group: stop reading rather than wait on it
    except asyncio.CancelledError:
        _kill_group(child.pid, signal.SIGKILL)
        child.close_pipes()
        raise
    if timed_out:
        log.info("command %r timed out after %.1f s; process group %d killed", argv[0], timeout_s, child.pid)
    return ExecResult(
        exit_code=TIMEOUT_EXIT if timed_out else (code if code is not None else -signal.SIGKILL),
        stdout=out.value(),
        stderr=err.value(),
        duration_ms=elapsed_ms(),
        timed_out=timed_out,
        stdout_dropped=out.dropped,
        stderr_dropped=err.dropped,
        error=f"timeout after {timeout_s:g} s" if timed_out else "",
    )


def shell_argv(command: str) -> list[str]:
    """The argv that runs ``command`` through the POSIX shell."""
    return [SHELL, "-c", command]
