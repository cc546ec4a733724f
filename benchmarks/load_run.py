"""Load: many injections and run orders at once across a mesh of real agents.

    python benchmarks/load_run.py [--agents 20] [--injections 200] [--runs 100] [--concurrency 8] [--out FILE.json]

Starts a mesh of `grapevine agent` processes on loopback (``LocalFleet``), warms
it up (one injection, one run, so lazy imports are paid before memory is
measured), waits until a fleet status query from every agent finds all the
others (a settled fleet), records each agent's resident memory, then, all at
once:

- ``--injections`` signed bundle versions, spread over ``--bundles`` bundles
  and injected round-robin through every agent's API (versions of one bundle
  strictly increase, so the newest is known);
- ``--runs`` runs, each targeting every agent, started round-robin from every
  agent, ``--concurrency`` in flight: ``runs x agents`` signed run orders in
  all (an agent that discovery missed gets no order: counted apart, as
  ``targets_missed_by_discovery``). Each order's command appends its run id to ``runs.log`` under the
  --root of the agent that executes it (found from the agent's command line
  through the shell's parent process).

Then it checks that nothing was lost and nothing ran twice: every agent holds
the same store and applied the newest version of every bundle (the file each
bundle manages, under its --root), every run reported a result from every
agent it found, and every run id appears exactly once in the runs.log of every
agent its order was sent to, and nowhere else. It
records resident memory again and compares. Prints one JSON document; exit 1
when anything was lost, ran twice, or memory grew past ``--max-rss-growth``.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from grapevine.cli.localfleet import LocalFleet, wait_for
from grapevine.policy import runorder
from grapevine.policy.bundle import Bundle, pack
from grapevine.policy.runorder import RunAction, RunOrder, SignedOrder

RECORD_SCRIPT = """#!/bin/sh
# Append the run id ($1) to runs.log under the --root of the agent that started this shell.
root=$(tr '\\0' '\\n' < /proc/$PPID/cmdline | sed -n '/^--root$/{n;p;q}')
[ -n "$root" ] || { echo "no --root in the parent's command line" >&2; exit 3; }
echo "$1" >> "$root/runs.log"
"""
RUN_TIMEOUT_S = 30.0  # one order's command; it takes milliseconds
READY_TIMEOUT_S = 90.0  # 20 agents importing at once on 2 cores
SETTLE_TIMEOUT_S = 90.0  # after the load: every store equal and every bundle applied
RSS_SETTLE_S = 2.0  # after the load, before the second memory reading


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def bundle_path(name: str) -> str:
    return f"/etc/load/{name.replace('/', '_')}"


class Load:
    def __init__(self, mesh: LocalFleet, script: Path) -> None:
        self.mesh = mesh
        self.script = script
        self.origins: dict[str, str] = {}
        self.newest: dict[str, str] = {}
        self.stamps: dict[str, int] = {}
        self.lock = threading.Lock()
        self.run_docs: list[dict] = []
        self.errors: list[str] = []
        self.injected = 0

    def inject(self, via: Any, name: str, version: int) -> None:
        content = f"{name} v{version} via {via.name}\n"
        doc = {"bundle": name, "resources": [{"file": bundle_path(name), "content": content}]}
        with self.lock:  # versions of one bundle strictly increase, even within one millisecond
            stamp = max(int(time.time() * 1000), self.stamps.get(name, 0) + 1)
            self.stamps[name] = stamp
        item = pack(Bundle.from_document(doc, "load"), self.mesh.keys.author_key, stamp)
        res = via.client().post("/v1/inject", data=item.encode())
        if not isinstance(res, dict) or res.get("key") != f"bundle/{name}":
            raise RuntimeError(f"inject {name} v{version} at {via.name}: {res}")
        with self.lock:
            if self.stamps[name] == stamp:
                self.newest[name] = content
            self.injected += 1

    def run(self, via: Any) -> dict:
        origin = self.origins.get(via.name)
        if origin is None:
            origin = self.origins[via.name] = via.client().get("/v1/run/origin")["node_id"]
        run_id = runorder.new_run_id()
        now = int(time.time() * 1000)
        order = RunOrder(run_id=run_id, origin=origin, selector="",
                         action=RunAction.command(["/bin/sh", str(self.script), run_id]),
                         timeout_ms=int(RUN_TIMEOUT_S * 1000), issued_ms=now,
                         deadline_ms=now + int((RUN_TIMEOUT_S + 30) * 1000), operator=self.mesh.keys.author_key.key_id)
        signed = SignedOrder.sign(order, self.mesh.keys.author_key)
        summary = None
        for ev in via.client().stream("POST", "/v1/run", {"order": signed.encode().hex(), "batch": None,
                                                          "max_failures": None}):
            if ev.get("event") == "done":
                summary = ev["summary"]
            elif ev.get("event") == "error":
                raise RuntimeError(f"run {run_id} at {via.name}: {ev}")
        if summary is None:
            raise RuntimeError(f"run {run_id} at {via.name}: the stream ended without a summary")
        return summary

    def workers(self, jobs: "queue.Queue", fn) -> None:
        while True:
            try:
                args = jobs.get_nowait()
            except queue.Empty:
                return
            try:
                out = fn(*args)
                if out is not None:
                    with self.lock:
                        self.run_docs.append(out)
            except Exception as exc:  # counted and reported; the load goes on
                with self.lock:
                    self.errors.append(f"{fn.__name__}{tuple(getattr(a, 'name', a) for a in args)}: {exc}")


def applied_everywhere(mesh: LocalFleet, newest: dict[str, str]) -> bool:
    digests = set()
    for a in mesh.agents:
        digests.add(a.status()["store_digest"])  # an agent not answering: wait_for tries again
        for name, content in newest.items():
            p = a.root / bundle_path(name).lstrip("/")
            if not p.is_file() or p.read_text() != content:
                return False
    return len(digests) == 1


def fleet_size(agent) -> int:
    """How many agents answer a fleet status query sent from ``agent``."""
    return len(agent.client().post("/v1/fleet/query", {"kind": "status", "selector": ""})["answers"])


def run_load(base: Path, *, agents: int, injections: int, runs: int, bundles: int = 20,
             concurrency: int = 8, inject_threads: int = 2) -> dict[str, Any]:
    """Start the mesh, load it, check it; every agent is stopped on the way out."""
    base.mkdir(parents=True, exist_ok=True)
    script = base / "record.sh"
    script.write_text(RECORD_SCRIPT)
    script.chmod(0o755)
    with LocalFleet(base / "mesh") as mesh:
        for i in range(agents):
            mesh.add(f"l{i}", tags={"role": "load"})
        mesh.up(timeout=READY_TIMEOUT_S)
        mesh.wait_linked(timeout=READY_TIMEOUT_S)
        load = Load(mesh, script)
        ags = mesh.agents
        # warm-up: one bundle and one run everywhere, so lazy imports happen before the memory reading
        load.inject(ags[0], "load/warm-up", 1)
        warm = load.run(ags[1 % agents])
        wait_for(lambda: applied_everywhere(mesh, load.newest), SETTLE_TIMEOUT_S, "the warm-up bundle")
        # A settled fleet: every agent's fleet query (`grapevine status --fleet`) finds all the
        # others, so the overlay left by the boot storm is whole before the load starts.
        for a in ags:
            wait_for(lambda a=a: fleet_size(a) == agents, SETTLE_TIMEOUT_S, f"{a.name} to see the whole fleet")
        warm_ids = {warm["run_id"]}
        load.injected = 0  # the warm-up is not part of the load
        time.sleep(RSS_SETTLE_S)
        rss_before = {a.name: rss_kib(a.proc.pid) for a in ags}

        inject_jobs: queue.Queue = queue.Queue()
        for k in range(injections):
            inject_jobs.put((ags[k % agents], f"load/b{k % bundles}", k // bundles + 1))
        run_jobs: queue.Queue = queue.Queue()
        for k in range(runs):
            run_jobs.put((ags[k % agents],))
        # one bundle is only ever injected by one thread, so its versions go out in order
        per_thread = [queue.Queue() for _ in range(inject_threads)]
        while not inject_jobs.empty():
            job = inject_jobs.get_nowait()
            per_thread[int(job[1].rsplit("b", 1)[1]) % inject_threads].put(job)
        t0 = time.monotonic()
        threads = [threading.Thread(target=load.workers, args=(q, load.inject)) for q in per_thread]
        threads += [threading.Thread(target=load.workers, args=(run_jobs, load.run)) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        load_s = time.monotonic() - t0
        t_settle = time.monotonic()
        wait_for(lambda: applied_everywhere(mesh, load.newest), SETTLE_TIMEOUT_S,
                 "every agent to apply the newest of every bundle")
        settle_s = time.monotonic() - t_settle
        time.sleep(RSS_SETTLE_S)
        rss_after = {a.name: rss_kib(a.proc.pid) for a in ags}

        run_ids = {d["run_id"] for d in load.run_docs}
        results = sum(len(d["results"]) for d in load.run_docs)
        missing = sum(len(d["missing"]) + len(d["not_started"]) for d in load.run_docs)
        short_targets = sum(agents - len(d["targets"]) for d in load.run_docs)
        failed = sum(len(d["failed"]) for d in load.run_docs)
        # Which agents each run sent its order to (node id "name@host:port").
        targeted = {d["run_id"]: {t.split("@", 1)[0] for t in d["targets"]} for d in load.run_docs}
        targeted[warm["run_id"]] = {t.split("@", 1)[0] for t in warm["targets"]}
        lost = twice = foreign = 0
        for a in ags:
            lines = Counter((a.root / "runs.log").read_text().split()) if (a.root / "runs.log").exists() else Counter()
            for rid, names in targeted.items():
                n = lines.get(rid, 0)
                if a.name in names:
                    lost += n == 0  # the order was sent here and never ran
                    twice += max(0, n - 1)
                else:
                    foreign += n  # ran here though it was never sent here
            foreign += sum(n for rid, n in lines.items() if rid not in targeted)
        disc = sorted(d["discovery_ms"] for d in load.run_docs)
        growth = {n: round(rss_after[n] / rss_before[n] - 1, 4) for n in rss_before}
        return {
            "agents": agents,
            "injections": load.injected,
            "bundles": len(load.newest) - 1,  # without the warm-up bundle
            "runs": len(load.run_docs),
            "orders": len(load.run_docs) * agents,
            "orders_sent": sum(len(d["targets"]) for d in load.run_docs),
            "results": results,
            "errors": load.errors,
            "load_s": round(load_s, 2),
            "settle_s": round(settle_s, 2),
            "within_a_minute": load_s <= 60.0,
            "orders_lost": lost,
            "orders_executed_twice": twice,
            "orders_foreign": foreign,
            "results_missing": missing,
            "targets_missed_by_discovery": short_targets,
            "targets_answered_late": sum(len(d.get("late_targets", [])) for d in load.run_docs),
            "runs_short_of_targets": sum(1 for d in load.run_docs if len(d["targets"]) < agents),
            "short_runs": [{"run_id": d["run_id"], "origin": d["origin"], "targets": len(d["targets"]),
                            "discovery_ms": d["discovery_ms"]} for d in load.run_docs if len(d["targets"]) < agents],
            "incomplete_runs": [{"run_id": d["run_id"], "origin": d["origin"], "missing": d["missing"],
                                 "not_started": d["not_started"], "unreachable": d.get("unreachable"),
                                 "duration_ms": d["duration_ms"]}
                                for d in load.run_docs if d["missing"] or d["not_started"]],
            "discovery_ms": {"median": disc[len(disc) // 2] if disc else None, "max": disc[-1] if disc else None},
            "results_failed": failed,
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
            "rss_growth_max": max(growth.values()),
            "rss_growth_min": min(growth.values()),
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", type=int, default=20)
    ap.add_argument("--injections", type=int, default=200)
    ap.add_argument("--bundles", type=int, default=20)
    ap.add_argument("--runs", type=int, default=100, help="runs, each targeting every agent")
    ap.add_argument("--concurrency", type=int, default=8, help="runs in flight at once")
    ap.add_argument("--max-rss-growth", type=float, default=0.2)
    ap.add_argument("--dir", default=None, help="where the agents live (default: a temporary directory)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gv-load-") as tmp:
        doc = run_load(Path(args.dir or tmp), agents=args.agents, injections=args.injections, runs=args.runs,
                       bundles=args.bundles, concurrency=args.concurrency)
    doc["max_rss_growth"] = args.max_rss_growth
    bad = (doc["orders_lost"] or doc["orders_executed_twice"] or doc["orders_foreign"] or doc["results_missing"]
           or doc["targets_missed_by_discovery"] or doc["errors"]
           or doc["rss_growth_max"] > args.max_rss_growth or doc["injections"] != args.injections)
    doc["ok"] = not bad
    print(json.dumps(doc, indent=1, sort_keys=True))
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1, sort_keys=True))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
