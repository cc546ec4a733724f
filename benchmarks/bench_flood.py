"""Peer port under a flood of hostile connections: memory, /health latency, honest delivery.

    .venv/bin/python benchmarks/bench_flood.py [--code both|new|old] [--conns 120] [--seconds 20] [--frames] [--json]

For each code under test, three agents on loopback (``LocalFleet``, local
preset); agent 0 is the target. After the mesh settles, ``tests/hostile/flood.py``
(a separate process) opens ``--conns`` hostile connections to the target's
peer port for ``--seconds`` (gzip bombs, slow 8 MiB bodies, idle WebSocket
upgrades without credentials, garbage bytes, idle sockets; none of them
holds the fleet key). Meanwhile this process

- samples the target's resident memory (``/proc/PID/status`` VmRSS) every 0.2 s;
- asks the target's ``/health`` every 0.25 s on a new connection (5 s timeout);
- injects a genuine bundle through another agent 5 s in and times its arrival
  at the target, then one through the target 10 s in and times its arrival at
  the others (honest gossip in both directions through the flooded port).

``--code old`` runs the same agents with ``OLD_PYTHON`` (default
/work/main/.venv/bin/python, the code before the peer-port fix); ``both`` runs
old then new in one invocation so the figures sit side by side. ``--frames``
also times the honest path in-process: sealing and opening one frame of
200 B, 64 KiB and 1 MiB with each code (the new frame adds a node-key
signature and its check). Every process
started is stopped (``LocalFleet.close``), the flood process is killed by PID.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLOOD = HERE.parent / "tests" / "hostile" / "flood.py"
OLD_PYTHON = os.environ.get("OLD_PYTHON", "/work/main/.venv/bin/python")
NODES = 3
RSS_EVERY_S = 0.2
HEALTH_EVERY_S = 0.25
HEALTH_TIMEOUT_S = 5.0
DELIVERY_TIMEOUT_S = 60.0
SETTLE_S = 2.0
FRAME_ROUNDS = 3


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def health_once(port: int) -> float | None:
    """Seconds /health took (None: failed or timed out)."""
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HEALTH_TIMEOUT_S)
    try:
        conn.request("GET", "/health")
        resp = conn.getresponse()
        resp.read()
        return time.monotonic() - t0 if resp.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def doc(version: int) -> dict:
    return {"bundle": "bench/flood", "resources": [{"file": "/flood.txt", "content": f"v{version}\n"}]}


def applied_everywhere(agents, version: int) -> bool:
    want = f"v{version}\n"
    for a in agents:
        p = a.root / "flood.txt"
        try:
            if p.read_text() != want:
                return False
        except FileNotFoundError:
            return False
    return True


def _waited(cond, timeout: float, what: str) -> float:
    """Seconds until ``cond`` held (``wait_for``, timed)."""
    from grapevine.cli.localfleet import wait_for

    t0 = time.monotonic()
    wait_for(cond, timeout, what)
    return time.monotonic() - t0


def run_one(code: str, conns: int, seconds: float, base: Path) -> dict:
    from grapevine.cli.localfleet import LocalFleet

    python = OLD_PYTHON if code == "old" else sys.executable
    out: dict = {"code": code, "python": python, "conns": conns, "seconds": seconds}
    mesh = LocalFleet(base / code, python=python)
    flood_proc: subprocess.Popen | None = None
    try:
        for i in range(NODES):
            mesh.add(f"{code}{i}")
        mesh.start()
        mesh.wait_ready()
        mesh.wait_linked()
        target, others = mesh.agents[0], mesh.agents[1:]
        mesh.inject(others[0], doc(1))
        out["delivery_no_flood_s"] = round(_waited(
            lambda: applied_everywhere(mesh.agents, 1), DELIVERY_TIMEOUT_S, "v1 everywhere"), 3)
        time.sleep(SETTLE_S)
        pid = target.proc.pid
        samples = []
        for _ in range(5):
            samples.append(rss_mib(pid) or 0.0)
            time.sleep(0.05)
        base_rss = statistics.median(samples)
        out["rss_before_mib"] = round(base_rss, 1)
        out["health_before_ms"] = round((health_once(target.port) or float("nan")) * 1000, 1)
        out["load_before"] = os.getloadavg()

        rss: list[float] = []
        health: list[float | None] = []
        stop = threading.Event()

        def sample_rss() -> None:
            while not stop.is_set():
                v = rss_mib(pid)
                if v is not None:
                    rss.append(v)
                stop.wait(RSS_EVERY_S)

        def probe_health() -> None:
            while not stop.is_set():
                health.append(health_once(target.port))
                stop.wait(HEALTH_EVERY_S)

        threads = [threading.Thread(target=sample_rss, daemon=True), threading.Thread(target=probe_health, daemon=True)]
        flood_proc = subprocess.Popen([sys.executable, str(FLOOD), "--port", str(target.port), "--conns", str(conns),
                                       "--seconds", str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        t0 = time.monotonic()
        for t in threads:
            t.start()
        deliveries = {}
        time.sleep(min(5.0, seconds / 4))
        t_inj = time.monotonic()
        mesh.inject(others[0], doc(2))
        try:
            deliveries["to_target_s"] = round(_waited(
                lambda: applied_everywhere([target], 2), DELIVERY_TIMEOUT_S, "v2 at the target"), 3)
        except RuntimeError:
            deliveries["to_target_s"] = None  # not within DELIVERY_TIMEOUT_S
        deliveries["to_target_during_flood"] = time.monotonic() - t0 < seconds
        time.sleep(max(0.0, t_inj + 5.0 - time.monotonic()))
        try:  # through the flooded agent's local API: the flood may have made that one unreachable too
            mesh.inject(target, doc(3))
            deliveries["from_target_s"] = round(_waited(
                lambda: applied_everywhere(others, 3), DELIVERY_TIMEOUT_S, "v3 at the others"), 3)
        except RuntimeError as exc:
            deliveries["from_target_s"] = None
            deliveries["from_target_error"] = str(exc)[-160:]
        deliveries["from_target_during_flood"] = time.monotonic() - t0 < seconds
        try:
            fout, ferr = flood_proc.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            flood_proc.kill()
            fout, ferr = flood_proc.communicate()
        stop.set()
        for t in threads:
            t.join(HEALTH_TIMEOUT_S + 1)
        out["flood"] = json.loads(fout) if fout.strip() else {"error": ferr.decode()[-500:]}
        ok = [h for h in health if h is not None]
        out["health_probes"] = len(health)
        out["health_failed"] = len(health) - len(ok)
        out["health_median_ms"] = round(statistics.median(ok) * 1000, 1) if ok else None
        out["health_max_ms"] = round(max(ok) * 1000, 1) if ok else None
        out["health_over_1s"] = sum(1 for h in ok if h > 1.0) + out["health_failed"]
        out["rss_max_mib"] = round(max(rss), 1) if rss else None
        out["rss_growth_mib"] = round(max(rss) - base_rss, 1) if rss else None
        out["target_alive"] = target.running()
        time.sleep(3.0)
        after = rss_mib(pid)
        out["rss_3s_after_mib"] = round(after, 1) if after else None
        out["delivery"] = deliveries
        out["load_after"] = os.getloadavg()
    finally:
        if flood_proc is not None and flood_proc.poll() is None:
            flood_proc.kill()
            flood_proc.wait(10)
        mesh.close()
    return out


ROWS = [("bundle to every node before the flood, s", "delivery_no_flood_s"), ("RSS before, MiB", "rss_before_mib"), ("RSS max during flood, MiB", "rss_max_mib"),
        ("RSS growth, MiB", "rss_growth_mib"), ("RSS 3 s after, MiB", "rss_3s_after_mib"),
        ("/health probes", "health_probes"), ("/health failed (5 s timeout)", "health_failed"),
        ("/health median, ms", "health_median_ms"), ("/health max, ms", "health_max_ms"),
        ("/health over 1 s or failed", "health_over_1s")]


def table(results: list[dict]) -> str:
    head = "| | " + " | ".join(r["code"] for r in results) + " |\n|---|" + "---:|" * len(results) + "\n"
    lines = [f"| {label} | " + " | ".join(str(r.get(k)) for r in results) + " |" for label, k in ROWS]
    lines.append("| bundle injected elsewhere reached the target, s | " +
                 " | ".join(str(r["delivery"].get("to_target_s")) for r in results) + " |")
    lines.append("| bundle injected at the target reached the others, s | " +
                 " | ".join(str(r["delivery"].get("from_target_s")) for r in results) + " |")
    lines.append("| flood attempts (connections opened) | " + " | ".join(str(r["flood"].get("attempts")) for r in results) + " |")
    lines.append("| target alive after | " + " | ".join(str(r["target_alive"]) for r in results) + " |")
    return head + "\n".join(lines)


FRAME_COST = r"""
import inspect, json, statistics, time
from grapevine.node.metrics import AgentMetrics
from grapevine.node.netkey import KeyRing, generate_key
from grapevine.node.transport import Transport
ring = KeyRing(); ring.install(generate_key())
mk = lambda nid: Transport(node_id=nid, ring=ring, metrics=AgentMetrics(), on_message=lambda *a: None,
                           on_send_failed=lambda p: None)
a, b = mk("a@127.0.0.1:1"), mk("b@127.0.0.1:2")
addressed = "dest" in inspect.signature(a.seal).parameters
out = {}
for size, n in ((200, 3000), (64 * 1024, 300), (1024 * 1024, 30)):
    body, runs = bytes(size), []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            f = a.seal(body, b.node_id) if addressed else a.seal(body)
            b.open(f)
        runs.append((time.perf_counter() - t0) / n * 1e6)
    out[str(size)] = {"us_per_frame": round(statistics.median(runs), 1), "frame_bytes": len(f)}
print(json.dumps(out))
"""


def frame_cost(python: str) -> dict:
    """Median microseconds to seal and open one frame (sender and receiver side), in-process."""
    done = subprocess.run([python, "-c", FRAME_COST], capture_output=True, text=True, timeout=300)
    return json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-300:]}


def main() -> int:
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--code", choices=("both", "new", "old"), default="both")
    p.add_argument("--conns", type=int, default=120)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--frames", action="store_true", help="also time sealing and opening one honest frame")
    a = p.parse_args()
    codes = ["old", "new"] if a.code == "both" else [a.code]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
        for code in codes:
            results.append(run_one(code, a.conns, a.seconds, Path(tmp)))
    if a.frames:  # alternated, three rounds, median per size: the shared box's load shifts minute to minute
        rounds: dict[str, list[dict]] = {r["code"]: [] for r in results}
        for _ in range(FRAME_ROUNDS):
            for r in results:
                rounds[r["code"]].append(frame_cost(r["python"]))
        for r in results:
            got = [x for x in rounds[r["code"]] if "error" not in x] or rounds[r["code"]]
            r["frame_cost"] = got[0] if "error" in got[0] else {
                size: {"us_per_frame": statistics.median(x[size]["us_per_frame"] for x in got),
                       "frame_bytes": got[0][size]["frame_bytes"]} for size in got[0]}
    if a.json:
        print(json.dumps(results, indent=1))
    else:
        print(table(results))
        for r in results:
            print(f"{r['code']}: flood outcomes {json.dumps(r['flood'].get('outcomes'))}; load {r['load_before']} -> {r['load_after']}")
            if "frame_cost" in r:
                print(f"{r['code']}: seal + open one frame, median us (body bytes: us): {json.dumps(r['frame_cost'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
