"""The executor: exit codes, timeouts that kill the whole group, bounded output."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from grapevine.cli.localfleet import wait_for
from grapevine.node.executor import (
    START_FAILED_EXIT,
    TIMEOUT_EXIT,
    execute,
    shell_argv,
)


LOOP = {"kind": "asyncio"}


@pytest.fixture(autouse=True, params=["asyncio", "uvloop"])
def event_loop_kind(request):
    """Every test runs on the stdlib loop and on uvloop (what the agent uses)."""
    LOOP["kind"] = request.param
    yield request.param


def run(argv, **kw):
    kw.setdefault("timeout_s", 10)
    if LOOP["kind"] == "uvloop":
        import uvloop

        return uvloop.run(execute(argv, **kw))
    return asyncio.run(execute(argv, **kw))


@pytest.mark.parametrize(
    "argv, code, stdout",
    [
        (["true"], 0, b""),
        (["false"], 1, b""),
        (["echo", "hello"], 0, b"hello\n"),
        (shell_argv("echo out; echo err >&2; exit 7"), 7, b"out\n"),
        (shell_argv("kill -TERM $$"), -15, b""),
    ],
)
def test_exit_code_and_stdout_are_reported(argv, code, stdout):
    res = run(argv)
    assert (res.exit_code, res.stdout) == (code, stdout)
    assert not res.timed_out


def test_stderr_is_captured_apart():
    res = run(shell_argv("echo err >&2"))
    assert res.stderr == b"err\n" and res.stdout == b""


def test_missing_program_reports_start_failure():
    res = run(["/nonexistent/program"])
    assert res.exit_code == START_FAILED_EXIT
    assert "cannot start" in res.error


def test_unknown_user_reports_start_failure():
    res = run(["true"], user="no-such-user-here")
    assert res.exit_code == START_FAILED_EXIT and "no such user" in res.error


def test_output_is_bounded_and_the_rest_counted():
    res = run(shell_argv("head -c 300000 /dev/zero; head -c 5000 /dev/zero >&2"), max_output=1000)
    assert len(res.stdout) == 1000 and res.stdout_dropped == 299000
    assert len(res.stderr) == 1000 and res.stderr_dropped == 4000
    assert res.exit_code == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); check its state
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    # the shell starts a background child that ignores SIGTERM, then waits
    script = f"(trap '' TERM; sleep 60) & echo $! > {pidfile}; wait"
    started = time.monotonic()
    res = run(shell_argv(script), timeout_s=0.5)
    took = time.monotonic() - started
    assert res.timed_out and res.exit_code == TIMEOUT_EXIT
    assert "timeout" in res.error
    child = int(pidfile.read_text())
    wait_for(lambda: not _alive(child), 5, "the background child to be killed with its group")
    assert took < 5


def test_child_environment_is_minimal():
    os.environ["GRAPEVINE_SECRET_TEST"] = "x"
    try:
        res = run(["env"])
    finally:
        del os.environ["GRAPEVINE_SECRET_TEST"]
    assert b"GRAPEVINE_SECRET_TEST" not in res.stdout
    assert b"PATH=" in res.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_command_runs_as_the_configured_user():
    import pwd

    res = run(["id", "-u"], user="nobody")
    assert res.exit_code == 0 and int(res.stdout) == pwd.getpwnam("nobody").pw_uid


def test_many_quick_commands_leave_no_zombies():
    for _ in range(20):
        assert run(["true"]).exit_code == 0
    with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as fh:
        assert fh.read().strip() == ""


def test_commands_never_close_a_descriptor_another_thread_opened(tmp_path):
    """A thread opening and reading files while commands run never has a descriptor closed under it.

    With the loop's pipe transports, uvloop closed each output pipe twice
    (libuv and the file object both owned it); a thread that opened a file
    in between lost it to the second close. In the agent that thread is a
    converge (a file resource failed with EBADF under load), and the same
    stray close can take the agent's own sockets.
    """
    import threading

    path = tmp_path / "sentinel"
    path.write_bytes(b"sentinel")
    ino = os.stat(path).st_ino
    stop = threading.Event()
    errors: list[str] = []
    opened = [0]

    def opener():
        while not stop.is_set() and opened[0] < 2_000_000:
            fd = os.open(path, os.O_RDONLY)
            opened[0] += 1
            try:
                if os.fstat(fd).st_ino != ino or os.pread(fd, 8, 0) != b"sentinel":
                    errors.append("descriptor replaced")
            except OSError as exc:
                errors.append(exc.strerror)
                continue
            try:
                os.close(fd)
            except OSError as exc:
                errors.append(exc.strerror)

    async def main():
        for _ in range(40):
            results = await asyncio.gather(*(execute(["true"], timeout_s=10) for _ in range(10)))
            assert all(r.exit_code == 0 for r in results)

    thread = threading.Thread(target=opener, daemon=True)
    thread.start()
    try:
        if LOOP["kind"] == "uvloop":
            import uvloop

            uvloop.run(main())
        else:
            asyncio.run(main())
    finally:
        stop.set()
        thread.join(10)
    assert opened[0] > 0
    assert errors == [], f"{len(errors)} of {opened[0]} opens lost their descriptor: {sorted(set(errors))}"
