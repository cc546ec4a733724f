"""Run fuzz targets under atheris (libFuzzer), one forked child per target.

    python tests/fuzz/atheris_main.py WORKDIR [--runs N] [--seconds S] [--seed K]
                                      [--timeout T] [--jobs J] [TARGET ...]

The parent imports grapevine once, instrumented for coverage (plus the
pure-Python ``tomllib``), then forks one child per target, at most ``--jobs``
at a time. Each child seeds ``WORKDIR/<target>/corpus`` with the target's
valid encodings and fuzzes until ``--runs`` inputs or ``--seconds`` passed;
libFuzzer ends the child itself. Every input must succeed or be refused with
the typed error; any other exception, or one input running past
``--timeout`` seconds, ends the child with the input saved under
``WORKDIR/<target>/artifacts``.

Prints one JSON line per target on stdout: ``target``, ``inputs`` (exact,
counted by the child in shared memory), ``seconds``, ``status`` (0 = clean)
and ``finding`` (kind, saved input in base64, the last lines of the child's
log) or null.
"""

from __future__ import annotations

import argparse
import base64
import json
import mmap
import os
import shutil
import signal
import struct
import sys
import tempfile
import time
from pathlib import Path

import atheris

KILL_GRACE_S = 30.0  # beyond --seconds, for startup and libFuzzer's own exit, before the parent kills a child
_COUNTER = struct.Struct("<Q")


def _child(target, workdir: Path, shared: mmap.mmap, flags: list[str]) -> None:
    import fuzz_targets

    corpus = workdir / "corpus"
    artifacts = workdir / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    fuzz_targets.write_seeds(target, corpus)
    log = os.open(workdir / "fuzz.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    count = 0

    def one(data: bytes) -> None:
        nonlocal count
        count += 1
        _COUNTER.pack_into(shared, 0, count)
        fuzz_targets.check_one(target, data)

    argv = [sys.argv[0], f"-max_len={target.max_len}", f"-artifact_prefix={artifacts}/", *flags, str(corpus)]
    atheris.Setup(argv, one)
    atheris.Fuzz()
    os._exit(0)  # not reached: libFuzzer exits the process


def _finding(workdir: Path) -> dict | None:
    found = sorted((workdir / "artifacts").glob("*"))
    if not found:
        return None
    art = found[0]
    lines = (workdir / "fuzz.log").read_text(errors="replace").splitlines()
    keep = [ln for ln in lines if not ln.startswith(("#", "INFO:", "WARNING:", '"', "###"))]
    return {
        "kind": art.name.split("-", 1)[0],
        "artifact": str(art),
        "input_b64": base64.b64encode(art.read_bytes()[:4096]).decode(),
        "log": "\n".join(keep[-40:]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir")
    ap.add_argument("targets", nargs="*")
    ap.add_argument("--runs", type=int, default=20_000)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=int, default=5, help="per-input bound in seconds")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_intermixed_args(argv)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None  # decoders of files read them from memory
    scratch = tempfile.mkdtemp(prefix="grapevine-fuzz-", dir=shm)
    os.environ["GRAPEVINE_FUZZ_TMP"] = scratch
    try:
        return _run(args, ap)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(args: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    with atheris.instrument_imports(include=["grapevine", "tomllib"]):
        import fuzz_targets
    names = args.targets or list(fuzz_targets.TARGETS)
    unknown = [n for n in names if n not in fuzz_targets.TARGETS]
    if unknown:
        ap.error(f"unknown targets {unknown}; known: {list(fuzz_targets.TARGETS)}")
    flags = [f"-runs={args.runs}", f"-max_total_time={args.seconds}", f"-seed={args.seed}",
             f"-timeout={args.timeout}", "-rss_limit_mb=2048", "-print_final_stats=1"]
    pending = list(names)
    running: dict[int, tuple[str, Path, mmap.mmap, float]] = {}
    results = []
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            wd = Path(args.workdir) / name
            wd.mkdir(parents=True, exist_ok=True)
            shared = mmap.mmap(-1, _COUNTER.size)
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                try:
                    _child(fuzz_targets.TARGETS[name], wd, shared, flags)
                finally:
                    os._exit(70)
            running[pid] = (name, wd, shared, time.monotonic())
        pid, status = _wait_one(running, args.seconds + KILL_GRACE_S)
        name, wd, shared, started = running.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        doc = {
            "target": name,
            "inputs": _COUNTER.unpack_from(shared, 0)[0],
            "seconds": round(time.monotonic() - started, 2),
            "status": code,
            "finding": _finding(wd),
        }
        if code != 0 and doc["finding"] is None:
            log = (wd / "fuzz.log").read_text(errors="replace").splitlines() if (wd / "fuzz.log").exists() else []
            doc["finding"] = {"kind": "exit", "artifact": None, "input_b64": "", "log": "\n".join(log[-40:])}
        shared.close()
        results.append(doc)
        print(json.dumps(doc), flush=True)
    return 0 if all(r["status"] == 0 for r in results) else 1


def _wait_one(running: dict, limit_s: float) -> tuple[int, int]:
    """Wait for any child; kill (by pid) one that outlived ``limit_s``."""
    while True:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid:
            return pid, status
        now = time.monotonic()
        for cpid, (_, _, _, started) in running.items():
            if now - started > limit_s:
                os.kill(cpid, signal.SIGKILL)
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
