"""grapevine agents (one fleet per event loop) beside as many Serf agents on loopback, in one run.

Measured, each as a median over several rounds:

- grapevine: time from just before the inject call to (a) the last node
  accepting the item ("delivered") and
  (b) the last targeted node finishing its converge report ("converged");
  both read from the agents' own records (history accepted_ms, report
  at_ms + duration_ms), so polling does not add to them.
- Serf: time from just before ``serf event -coalesce=false`` to the last
  agent's event handler writing its timestamp.
- idle CPU (percent of one core) and resident memory per agent, for every
  fleet, sampled from /proc over the same idle window (before any bundle:
  what a fresh agent holds), and resident memory again after the rounds
  (every agent has converged bundles: the policy engine is loaded).

The grapevine sources are byte-compiled first, as an installed wheel is, so
no agent compiles a module at start.

Usage: python benchmarks/bench_mesh.py [--nodes 50] [--rounds 7] [--idle-s 30] [--loops asyncio,uvloop] [--out benchmarks/RESULTS-mesh.md]
Needs `serf` on PATH (apt-get install serf); without it only grapevine is measured.
Every process started here is killed by PID before the script exits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from grapevine.cli.client import AgentClient
from grapevine.cli.localfleet import LocalFleet
from grapevine.policy.bundle import Bundle, pack
from grapevine.policy.keys import SigningKey

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(pred, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception:
            pass
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        with open(log, "ab") as fh:
            p = subprocess.Popen(argv, stdout=fh, stderr=fh, env=env, start_new_session=True)
        self.procs.append(p)
        return p

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


# -- grapevine -----------------------------------------------------------------
def start_grapevine(n: int, base: Path, procs: Procs, preset: str, fsync: str,
                    loop: str = "asyncio") -> tuple[list[subprocess.Popen], list[Path], SigningKey]:
    env = {"GRAPEVINE_LOG_LEVEL": "warning", "GRAPEVINE_FSYNC": fsync, "GRAPEVINE_EVENT_LOOP": loop}
    env.update({k[len("BENCH_"):]: v for k, v in os.environ.items() if k.startswith("BENCH_GRAPEVINE_")})  # extra agent settings
    fleet = LocalFleet(base / "grapevine", preset=preset, env=env)
    pids, socks = [], []
    for i in range(n):
        joins = [fleet.agents[0].address, fleet.agents[(i * 7) % i].address] if i else []
        a = fleet.add(f"g{i}", tags={"role": "web" if i % 2 == 0 else "db"}, join=joins)
        a.start()
        procs.procs.append(a.proc)  # Procs ends every agent by its PID, with the peers' processes
        pids.append(a.proc)
        socks.append(Path(a.socket))
        time.sleep(0.05)
    alice = fleet.keys.author_key
    clients = [AgentClient(str(s), 10) for s in socks]
    wait_until(lambda: all(s.exists() for s in socks), 120, what="grapevine agents to start")
    wait_until(lambda: len({c.get("/v1/status")["store_digest"] for c in clients}) == 1
               and all(c.get("/v1/status")["active"] > 0 for c in clients), 120, what="one grapevine mesh")
    return pids, socks, alice


def grapevine_round(socks: list[Path], author: SigningKey, r: int) -> tuple[float, float]:
    clients = [AgentClient(str(s), 10) for s in socks]
    name = f"bench/r{r}"
    doc = {"bundle": name, "resources": [{"file": f"/srv/bench-{r}", "content": f"round {r}\n"}]}
    if os.environ.get("BENCH_TARGET"):
        doc["target"] = os.environ["BENCH_TARGET"]
    item = pack(Bundle.from_document(doc, "bench"), author, now_ms())
    version = str(item.version)
    src = clients[r % len(clients)]
    t0 = now_ms()
    src.post("/v1/inject", data=item.encode())

    def done(c: AgentClient) -> tuple[int, int] | None:
        hist = c.get(f"/v1/history?name={name}")
        acc = next((v["accepted_ms"] for v in hist["versions"] if v["version"] == version), None)
        for rep in c.get("/v1/reports?limit=10")["reports"]:
            rv = rep["report"].get("versions", {}).get(name)
            if rv == version and rep["trigger"] != "api":
                return acc, rep["report"]["started_ms"] + int(rep["report"]["duration_ms"])
        return None

    results: dict[int, tuple[int, int]] = {}

    def all_done() -> bool:
        for i, c in enumerate(clients):
            if i not in results:
                got = done(c)
                if got is not None:
                    results[i] = got
        return len(results) == len(clients)

    wait_until(all_done, 60, 0.25, what=f"round {r} to converge everywhere")
    delivered = max(a for a, _ in results.values()) - t0
    converged = max(b for _, b in results.values()) - t0
    return delivered, converged


# -- serf ----------------------------------------------------------------------
def start_serf(n: int, base: Path, procs: Procs) -> tuple[list[subprocess.Popen], list[int], Path]:
    ports = free_ports(2 * n)
    marks = base / "serf-marks"
    marks.mkdir()
    handler = base / "serf-handler.sh"
    handler.write_text(f'#!/bin/sh\necho "$(date +%s%N) $SERF_USER_EVENT" >> {marks}/"$SERF_SELF_NAME"\n')
    handler.chmod(0o755)
    pids, rpcs = [], []
    for i in range(n):
        bind, rpc = ports[2 * i], ports[2 * i + 1]
        argv = ["serf", "agent", f"-node=s{i}", f"-bind=127.0.0.1:{bind}", f"-rpc-addr=127.0.0.1:{rpc}",
                f"-event-handler=user={handler}", "-log-level=warn"]
        if i:
            argv.append(f"-join=127.0.0.1:{ports[0]}")
        pids.append(procs.start(argv, base / f"serf{i}.log"))
        rpcs.append(rpc)
        time.sleep(0.02)

    def alive() -> bool:
        out = subprocess.run(["serf", "members", f"-rpc-addr=127.0.0.1:{rpcs[-1]}", "-status=alive", "-format=json"],
                             capture_output=True, text=True, timeout=10)
        return len(json.loads(out.stdout)["members"]) == n

    wait_until(alive, 120, 0.5, what="all Serf agents alive")
    return pids, rpcs, marks


def serf_round(n: int, rpcs: list[int], marks: Path, r: int) -> float:
    event = f"bench{r}"
    t0 = time.time_ns()
    subprocess.run(["serf", "event", f"-rpc-addr=127.0.0.1:{rpcs[r % len(rpcs)]}", "-coalesce=false", event, "x"],
                   check=True, capture_output=True, timeout=10)

    def stamps() -> list[int] | None:
        got = []
        for f in marks.iterdir():
            for line in f.read_text().splitlines():
                ts, _, ev = line.partition(" ")
                if ev == event:
                    got.append(int(ts))
        return got if len(got) >= n else None

    got = wait_until(stamps, 60, 0.1, what=f"serf event {event} on every agent")
    return (max(got) - t0) / 1e6


# -- idle ----------------------------------------------------------------------
def idle_profile(groups: dict[str, list[subprocess.Popen]], seconds: float) -> dict[str, dict[str, float]]:
    before = {g: [cpu_ticks(p.pid) for p in ps] for g, ps in groups.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    took = time.monotonic() - t0
    out = {}
    for g, ps in groups.items():
        cpu = [(cpu_ticks(p.pid) - b) / CLK_TCK / took * 100 for p, b in zip(ps, before[g])]
        rss = [rss_mb(p.pid) for p in ps]
        out[g] = {"cpu_pct_median": statistics.median(cpu), "cpu_pct_mean": statistics.fmean(cpu),
                  "rss_mb_median": statistics.median(rss), "rss_mb_max": max(rss)}
    return out


def byte_compile() -> None:
    """Compile the grapevine sources as pip does at install (PYTHONDONTWRITEBYTECODE may be set here)."""
    import compileall

    root = Path(__file__).resolve().parents[1]
    for d in ("gossip", "policy", "node", "cli"):
        compileall.compile_dir(str(root / d), quiet=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--idle-s", type=float, default=30.0)
    ap.add_argument("--preset", choices=["lan", "local"], default="lan")
    ap.add_argument("--fsync", choices=["always", "local", "never"], default="local", help="the agents' fsync setting")
    ap.add_argument("--loops", default="asyncio,uvloop", help="one grapevine fleet per event loop named here")
    ap.add_argument("--note", default="", help="what else ran on the machine, for the results file")
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS-mesh.md")))
    args = ap.parse_args()
    loops = [x for x in args.loops.split(",") if x]
    have_serf = shutil.which("serf") is not None
    procs = Procs()
    base = Path(tempfile.mkdtemp(prefix="bench_mesh_"))
    load_before = os.getloadavg()
    byte_compile()
    fleets: dict[str, tuple[list, list, SigningKey]] = {}
    try:
        for loop in loops:
            print(f"starting {args.nodes} grapevine agents (preset {args.preset}, event loop {loop})", flush=True)
            fleets[loop] = start_grapevine(args.nodes, base / loop, procs, args.preset, args.fsync, loop)
        s_procs = []
        if have_serf:
            print(f"starting {args.nodes} serf agents", flush=True)
            s_procs, rpcs, marks = start_serf(args.nodes, base, procs)
        time.sleep(5)  # let every fleet settle (joins, first shuffles, push-pulls)
        print(f"idle profile over {args.idle_s:.0f} s", flush=True)
        groups = {f"grapevine ({loop})": fleets[loop][0] for loop in loops}
        if have_serf:
            groups["Serf"] = s_procs
        idle = idle_profile(groups, args.idle_s)
        g_del = {loop: [] for loop in loops}
        g_conv = {loop: [] for loop in loops}
        s_del = []
        for r in range(args.rounds):
            line = f"round {r}:"
            for loop in loops:
                _, socks, author = fleets[loop]
                d, c = grapevine_round(socks, author, r)
                g_del[loop].append(d)
                g_conv[loop].append(c)
                line += f" grapevine ({loop}) delivered {d} ms, converged {c} ms;"
            if have_serf:
                s = serf_round(args.nodes, rpcs, marks, r)
                s_del.append(s)
                line += f" serf handler ran on all in {s:.0f} ms"
            print(line, flush=True)
            time.sleep(1.0)
        after = {g: statistics.median(rss_mb(p.pid) for p in ps) for g, ps in groups.items()}
    finally:
        procs.kill_all()
        shutil.rmtree(base, ignore_errors=True)
    res = {
        "nodes": args.nodes, "rounds": args.rounds, "preset": args.preset, "fsync": args.fsync, "loops": loops,
        "delivered_ms_median": {loop: statistics.median(v) for loop, v in g_del.items()},
        "converged_ms_median": {loop: statistics.median(v) for loop, v in g_conv.items()},
        "serf_event_ms_median": statistics.median(s_del) if s_del else None,
        "idle": idle, "rss_after_rounds_mb_median": after,
        "load_before": load_before, "load_after": os.getloadavg(),
    }
    print(json.dumps(res, indent=2))
    write_results(Path(args.out), res, args, g_del, g_conv, s_del)


def write_results(path: Path, res: dict, args: argparse.Namespace, g_del: dict, g_conv: dict, s_del: list) -> None:
    serf_v = subprocess.run(["serf", "version"], capture_output=True, text=True).stdout.splitlines()[0] if s_del else "absent"
    idle = res["idle"]
    groups = list(idle)
    loops = res["loops"]

    after = res["rss_after_rounds_mb_median"]

    def fmt(v: float, digits: int) -> str:
        return f"{v:.{digits}f}"

    def cells(fn) -> str:
        return " | ".join(fn(g) for g in groups)

    def per_loop(values: dict, serf: str) -> str:
        return cells(lambda g: f"{values[g[11:-1]]:.0f}" if g.startswith("grapevine") else serf)

    serf_ms = "n/a" if res["serf_event_ms_median"] is None else f"{res['serf_event_ms_median']:.0f}"
    rows = [
        f"| delivery to the last node, median of {res['rounds']} (ms) | {per_loop(res['delivered_ms_median'], serf_ms)} |",
        f"| inject to last converge report, median (ms) | {per_loop(res['converged_ms_median'], 'n/a')} |",
        f"| idle CPU per agent, median (% of one core) | {cells(lambda g: fmt(idle[g]['cpu_pct_median'], 2))} |",
        f"| idle CPU per agent, mean (% of one core) | {cells(lambda g: fmt(idle[g]['cpu_pct_mean'], 2))} |",
        f"| resident memory per idle agent, median (MiB) | {cells(lambda g: fmt(idle[g]['rss_mb_median'], 1))} |",
        f"| resident memory per idle agent, largest (MiB) | {cells(lambda g: fmt(idle[g]['rss_mb_max'], 1))} |",
        f"| resident memory after the rounds, median (MiB) | {cells(lambda g: fmt(after[g], 1))} |",
    ]
    rounds = "; ".join(f"grapevine ({loop}) delivered {g_del[loop]}, converged {g_conv[loop]}" for loop in loops)
    text = f"""# Mesh benchmark: {res['nodes']} grapevine agents per event loop beside {res['nodes']} Serf agents

Produced by `python benchmarks/bench_mesh.py --nodes {res['nodes']} --rounds {res['rounds']} --idle-s {args.idle_s:.0f} --preset {res['preset']} --fsync {res['fsync']} --loops {','.join(loops)}`
on {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {serf_v}; all agents on loopback,
every fleet running at once. Run on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average
{res['load_before'][0]:.1f} before, {res['load_after'][0]:.1f} after.{(' ' + args.note) if args.note else ''}

| measure | {' | '.join(groups)} |
|---|{'---|' * len(groups)}
{chr(10).join(rows)}

- grapevine "delivery": from just before the inject call on one agent to the last of the
  {res['nodes']} agents accepting the signed bundle (its `accepted_ms`, committed to SQLite).
  "converge report": to the end of the last agent's converge of that bundle (a file under its
  --root). fsync setting "{res['fsync']}". A converge starts at once on the first arrival after a quiet 200 ms window.
- Serf: from just before `serf event -coalesce=false` to the last agent's user-event handler
  writing its timestamp (a `/bin/sh` script; Serf forks it per event).
- Idle: CPU time and resident memory (VmRSS) from /proc over the same {args.idle_s:.0f} s window for every
  fleet, after 5 s of settling, before any bundle was injected. "After the rounds": every agent
  has received and converged {res['rounds']} bundles (the policy engine and providers are loaded).
- Event loop "asyncio" is the agent's default: OpenSSL (ssl, _hashlib) stays out of the process;
  "uvloop" imports ssl and so maps OpenSSL.

Per round (ms): {rounds}; Serf {[round(x) for x in s_del]}.
"""
    path.write_text(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
