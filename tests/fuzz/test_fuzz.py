"""Coverage-guided fuzzing of every decoder of outside bytes or text, bounded for the suite.

One ``atheris_main.py`` process imports grapevine once (instrumented) and
forks a libFuzzer child per target, two at a time. Each target runs exactly
``RUNS`` inputs (same seed, same inputs every time), however busy the
machine: a load that slows the fuzzer makes the test take longer, never
test less. A per-input timeout that turns out to be the machine stalling
(the input alone runs quickly) resumes that target for the inputs it still
owes, from its grown corpus. ``SECONDS_PER_TARGET`` only bounds a stuck harness. About 20 s
on a quiet 2-core machine, so these tests are in the slow tier; the inputs
each target got are printed at the end of the session. Longer runs:
``benchmarks/fuzz_all.py``.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.fuzz import fuzz_targets as F

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = 20_000  # inputs per target: 0.3-3.5 s each on a quiet 2-core machine
# Only a bound for a harness that stops making progress: the slowest target (agent config, instrumented
# tomllib) does about 200 inputs a second at load 40 on 2 cores, so 20,000 take ~100 s there.
SECONDS_PER_TARGET = 300
PER_INPUT_S = 10  # libFuzzer's per-input bound (whole seconds); a busy machine stalls single inputs for seconds
SEED = 20_241_125  # libFuzzer -seed: the same inputs on every run of the suite
RUN_LIMIT_S = 1200  # the fuzz process as a whole, should everything go wrong
MAX_RESUMES = 3  # machine stalls one target may survive; a fourth stall fails the test

pytestmark = pytest.mark.timeout(RUN_LIMIT_S + 60)  # the first test waits for the whole fuzz run


def _fuzz(work, runs: int, names: list[str] = ()) -> dict[str, dict]:
    """Run atheris_main.py over ``names`` (default: every target) in ``work``; its JSON line per target."""
    cmd = [sys.executable, os.path.join(HERE, "atheris_main.py"), str(work), "--runs", str(runs),
           "--seconds", str(SECONDS_PER_TARGET), "--timeout", str(PER_INPUT_S), "--seed", str(SEED), "--jobs", "2",
           *names]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=RUN_LIMIT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    results = {doc["target"]: doc for doc in (json.loads(ln) for ln in out.splitlines() if ln.startswith("{"))}
    assert results, f"the fuzz process printed nothing (exit {proc.returncode}):\n{err[-3000:]}"
    return results


def _report(fuzz_report: dict, doc: dict, inputs: int, seconds: float) -> None:
    fuzz_report[doc["target"]] = {"inputs": inputs, "seconds": seconds, "status": doc["status"],
                                  "finding": doc["finding"] and doc["finding"]["kind"]}


@pytest.fixture(scope="module")
def fuzz_work(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def fuzz_results(fuzz_work, fuzz_report):
    results = _fuzz(fuzz_work, RUNS)
    for doc in results.values():
        _report(fuzz_report, doc, doc["inputs"], doc["seconds"])
    return results


class _Overtime(Exception):
    pass


def _confirm_timeout(target: F.Target, data: bytes) -> float | None:
    """Re-run an input libFuzzer timed out on, alone: its duration, or None if it hangs again."""
    def alarm(signum, frame):
        raise _Overtime()

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, PER_INPUT_S)
    t0 = time.monotonic()
    try:
        F.check_one(target, data)
    except _Overtime:
        return None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return time.monotonic() - t0


def _stall(name: str, doc: dict) -> bool:
    """True if ``doc`` ended on a per-input timeout that was the machine, not the decoder (the input alone
    finishes within a second); a timeout input that is slow or hangs alone fails here."""
    finding = doc["finding"]
    if finding is None or finding["kind"] != "timeout" or not finding["artifact"]:
        return False
    with open(finding["artifact"], "rb") as fh:
        data = fh.read()
    took = _confirm_timeout(F.TARGETS[name], data)
    assert took is not None, f"{name}: input hangs past {PER_INPUT_S} s: {finding['input_b64']}"
    assert took < 1.0, f"{name}: input takes {took:.1f} s: {finding['input_b64']}"
    return True


@pytest.mark.parametrize("name", list(F.TARGETS))
def test_decoder_survives_fuzzing(name, fuzz_results, fuzz_work, fuzz_report):
    r = fuzz_results.get(name)
    assert r is not None, f"{name} was not fuzzed"
    inputs, seconds = r["inputs"], r["seconds"]
    resumes = 0
    while (stalled := _stall(name, r)) and inputs < RUNS:
        # The machine stalled one input past PER_INPUT_S and libFuzzer stopped the target there: fuzz on
        # for the inputs still owed (the corpus it grew is kept), with the stalled input moved aside.
        assert resumes < MAX_RESUMES, f"{name}: the machine stalled it {resumes + 1} times; {inputs} of {RUNS} inputs"
        resumes += 1
        os.replace(r["finding"]["artifact"], fuzz_work / name / f"stalled-{resumes}")
        r = _fuzz(fuzz_work, RUNS - inputs, [name])[name]
        inputs, seconds = inputs + r["inputs"], seconds + r["seconds"]
        _report(fuzz_report, r, inputs, seconds)
    finding = None if stalled else r["finding"]
    assert finding is None and (stalled or r["status"] == 0), (
        f"{name}: {finding and finding['kind']} (exit {r['status']}) after {inputs} inputs\n"
        f"input (base64): {finding and finding['input_b64']}\n{finding and finding['log']}"
    )
    assert inputs >= RUNS, (f"{name}: stopped after {inputs} of {RUNS} inputs in {seconds} s "
                            f"(the {SECONDS_PER_TARGET} s bound for a stuck harness ended it)")


def test_a_raising_decoder_is_reported_as_a_finding(tmp_path):
    """The harness itself: an exception other than the typed refusal ends fuzzing with a finding."""
    def broken(data: bytes) -> None:
        if len(data) > 3:
            raise KeyError("not a typed refusal")

    t = F.Target(name="broken", fn=broken, seeds=lambda: [b"ab"], max_len=16)
    with pytest.raises(KeyError):
        F.check_one(t, b"abcd")
    F.check_one(t, b"ab")
