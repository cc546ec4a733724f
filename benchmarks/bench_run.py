"""Push-style run latency: grapevine against SSH-based tools, side by side.

    python benchmarks/bench_run.py [--sizes 50,100] [--repeat 5] [--tools ...] [--out benchmarks/RESULTS-run.md]

For each fleet size it measures the whole-process wall time of "run `true`
on every node and wait until every result is back":

- grapevine: N agents on loopback (``LocalFleet``), ``grapevine run --json -- true``;
- Fabric ``ThreadingGroup(...).run("true")``;
- pyinfra ``pyinfra inventory.py exec -y -- true``;
- ``ansible all -m command -a true`` with ``--forks 5`` (its default) and ``--forks 50``.

The SSH tools run from a separate virtualenv (``--venv``, default
/tmp/sshbench-venv: ``pip install fabric pyinfra ansible-core``), never from
the project's dependencies. They reach N "hosts" that are distinct loopback
addresses 127.0.0.2... served by a few sshd processes on port 2222 (an sshd
listens on at most 16 addresses), logging in as a plain user with key
authentication, host keys in known_hosts, each tool on its default profile.
sshd's ``MaxStartups`` is raised so it does not drop the tools' parallel
connections (the stock 10:30:100 would refuse them: that would hobble the
tools, not measure them). Ansible's ControlPersist sockets go to a fresh
directory for every repetition, so each run starts cold, as an ad-hoc command
does on a fresh shell; grapevine's agents are long-running by design, so
their mesh links are warm.

Needs root (creates the user ``gvbench`` and runs sshd). Prints a table and
writes the medians and the per-node slope (seconds per extra node, between
the smallest and the largest size) to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SSH_DIR = Path("/tmp/gvbench-ssh")
SSH_USER = "gvbench"
SSH_PORT = 2222
ADDRS_PER_SSHD = 16  # OpenSSH's limit of ListenAddress sockets per daemon
MAX_STARTUPS = "400:30:800"  # parallel unauthenticated connections sshd accepts before dropping
TOOL_TIMEOUT_S = 600  # one tool run; ansible --forks 5 on 100 hosts is the slowest
SETTLE_S = 3.0  # after the mesh formed: joins and first shuffles done before timing
SETTLE_MAX_S = 90.0  # ...and at most this long for the start-up CPU burst of a big mesh to pass
IDLE_CORES = 0.6  # agents using less than this many cores over a second are idle (100 idle agents use ~0.35)
LOADS: list[float] = []  # 1-minute load average after each timed run, for the record
TOOLS = ("grapevine", "fabric", "pyinfra", "ansible-f5", "ansible-f50")


def host_addrs(n: int) -> list[str]:
    if n > 250:
        raise SystemExit("at most 250 loopback hosts")
    return [f"127.0.0.{i + 2}" for i in range(n)]


# ------------------------------------------------------------------ sshd


def ensure_user() -> Path:
    try:
        pw = pwd.getpwnam(SSH_USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", SSH_USER], check=True)
        pw = pwd.getpwnam(SSH_USER)
    subprocess.run(["usermod", "-p", "*", SSH_USER], check=True)  # no password, but not "locked" for sshd
    SSH_DIR.mkdir(mode=0o700, exist_ok=True)
    key = SSH_DIR / "id_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    home = Path(pw.pw_dir)
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    (ssh / "authorized_keys").write_text((SSH_DIR / "id_ed25519.pub").read_text())
    os.chmod(ssh / "authorized_keys", 0o600)
    os.chown(ssh, pw.pw_uid, pw.pw_gid)
    os.chown(ssh / "authorized_keys", pw.pw_uid, pw.pw_gid)
    return key


def start_sshds(addrs: list[str]) -> list[subprocess.Popen]:
    hostkey = SSH_DIR / "ssh_host_ed25519_key"
    if not hostkey.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey)], check=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    procs = []
    for i in range(0, len(addrs), ADDRS_PER_SSHD):
        chunk = addrs[i:i + ADDRS_PER_SSHD]
        conf = SSH_DIR / f"sshd_{i // ADDRS_PER_SSHD}.conf"
        conf.write_text("\n".join([
            f"Port {SSH_PORT}", *[f"ListenAddress {a}" for a in chunk], f"HostKey {hostkey}",
            "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "UsePAM no", f"MaxStartups {MAX_STARTUPS}", f"AllowUsers {SSH_USER}",
            f"PidFile {SSH_DIR}/sshd_{i // ADDRS_PER_SSHD}.pid", "LogLevel ERROR", "",
        ]))
        procs.append(subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(conf)],
                                      stdout=subprocess.DEVNULL, stderr=open(SSH_DIR / "sshd.log", "ab")))
    deadline = time.monotonic() + 10
    for a in addrs:
        while not subprocess.run(["ssh-keyscan", "-p", str(SSH_PORT), "-T", "2", a], capture_output=True).stdout:
            if time.monotonic() > deadline:
                raise SystemExit(f"sshd on {a}:{SSH_PORT} did not come up; see {SSH_DIR}/sshd.log")
            time.sleep(0.1)
    return procs


def write_known_hosts(addrs: list[str]) -> Path:
    """Host keys of every alias in the invoking user's known_hosts (the documented way)."""
    out = subprocess.run(["ssh-keyscan", "-p", str(SSH_PORT), "-t", "ed25519", *addrs], capture_output=True,
                         text=True, check=True).stdout
    kh = Path.home() / ".ssh" / "known_hosts"
    kh.parent.mkdir(mode=0o700, exist_ok=True)
    existing = kh.read_text() if kh.exists() else ""
    wanted = {f"[{a}]:{SSH_PORT}" for a in addrs}
    kept = [ln for ln in existing.splitlines() if ln.split(" ", 1)[0] not in wanted]
    kh.write_text("\n".join(kept + out.strip().splitlines()) + "\n")
    os.chmod(kh, 0o600)
    return kh


# ------------------------------------------------------------------ tools


def timed(cmd: list[str], env: dict | None = None, cwd: str | None = None) -> tuple[float, int, str]:
    """Wall time of the whole process, its exit status, and its output (stdout first)."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=TOOL_TIMEOUT_S)
    return time.perf_counter() - t0, p.returncode, p.stdout + "\n" + p.stderr


FABRIC_SCRIPT = """
import sys
from fabric import ThreadingGroup
hosts = sys.argv[3:]
g = ThreadingGroup(*hosts, user=sys.argv[1], port=int(sys.argv[2]), connect_kwargs={"key_filename": %r})
res = g.run("true", hide=True, warn=True)
bad = [c.host for c, r in res.items() if getattr(r, "exited", 1) != 0]
sys.exit(1 if bad or len(res) != len(hosts) else 0)
"""


def run_fabric(venv: Path, key: Path, addrs: list[str], work: Path) -> tuple[float, int, str]:
    script = work / "fab_true.py"
    script.write_text(FABRIC_SCRIPT % str(key))
    return timed([str(venv / "bin/python"), str(script), SSH_USER, str(SSH_PORT), *addrs])


def run_pyinfra(venv: Path, key: Path, addrs: list[str], work: Path) -> tuple[float, int, str]:
    inv = work / "inventory.py"
    inv.write_text("hosts = %r\n" % ([(a, {"ssh_user": SSH_USER, "ssh_port": SSH_PORT, "ssh_key": str(key)})
                                      for a in addrs],))
    return timed([str(venv / "bin/pyinfra"), str(inv), "exec", "-y", "--", "true"], cwd=str(work))


def run_ansible(venv: Path, key: Path, addrs: list[str], work: Path, forks: int) -> tuple[float, int, str]:
    inv = work / "hosts.ini"
    inv.write_text("[fleet]\n" + "".join(f"{a} ansible_port={SSH_PORT}\n" for a in addrs)
                   + f"[fleet:vars]\nansible_user={SSH_USER}\nansible_ssh_private_key_file={key}\n"
                   + "ansible_python_interpreter=/usr/bin/python3\n")
    cp = Path(tempfile.mkdtemp(prefix="cp", dir=work))  # cold ControlPersist for every repetition
    env = dict(os.environ, ANSIBLE_SSH_CONTROL_PATH_DIR=str(cp), ANSIBLE_LOCAL_TEMP=str(work / "ansible-tmp"))
    try:
        return timed([str(venv / "bin/ansible"), "all", "-i", str(inv), "-m", "command", "-a", "true",
                      "--forks", str(forks)], env=env)
    finally:
        for sock in cp.glob("*"):  # end the control masters so they do not linger
            subprocess.run(["ssh", "-O", "exit", "-o", f"ControlPath={sock}", "x"], capture_output=True)
        shutil.rmtree(cp, ignore_errors=True)


def _cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def settle(pids: list[int]) -> float:
    """Wait until the agents are done starting: their CPU use over a second falls to an idle level."""
    t0 = time.monotonic()
    time.sleep(SETTLE_S)
    while time.monotonic() - t0 < SETTLE_MAX_S:
        before = _cpu_s(pids)
        time.sleep(1.0)
        if _cpu_s(pids) - before < IDLE_CORES:
            break
    return time.monotonic() - t0


def grapevine_times(n: int, repeat: int, base: str | None) -> list[float]:
    """Start n agents (production "lan" preset, state on disk), time `grapevine run -- true`."""
    from grapevine.cli.localfleet import LocalFleet

    times: list[float] = []
    where = Path(tempfile.mkdtemp(prefix="gvbench-mesh-", dir=base))
    try:
        with LocalFleet(where, preset="lan") as mesh:
            for i in range(n):
                mesh.add(f"b{i}", tags={"role": "bench"})
            mesh.up(timeout=180)
            mesh.wait_linked(timeout=180)
            settled = settle([a.proc.pid for a in mesh.agents])
            print(f"  {n} agents settled ({settled:.1f} s after the mesh formed)", flush=True)
            for r in range(repeat + 1):
                t, code, out = timed([sys.executable, "-m", "grapevine.cli.main", "run", "--agent", mesh.agents[0].socket,
                                      "--key", str(mesh.keys.author), "--json", "--", "true"])
                try:
                    doc = json.loads(out.split("\n", 1)[0])
                except ValueError:
                    doc = None
                if code != 0 or doc is None or len(doc["results"]) != n:
                    got = len(doc["results"]) if doc else "?"
                    raise SystemExit(f"grapevine n={n}: exit {code}, {got} results:\n{out[-1500:]}")
                if r > 0:  # the first run opens the agents' connections to the origin
                    times.append(t)
                LOADS.append(os.getloadavg()[0])
                print(f"  grapevine n={n} run {r}: {t:.3f} s (discovery {doc['discovery_ms']} ms, "
                      f"order replies p50 {doc['order_reply_ms']['p50']} ms, load {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        shutil.rmtree(where, ignore_errors=True)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="50,100")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--state-dir", default=None,
                    help="Where the agents keep their state (default: the system temp dir, on disk)")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--venv", default="/tmp/sshbench-venv")
    ap.add_argument("--merge", default=None,
                    help="A previous RESULTS file: its raw times stand in for tools not measured in this run")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "RESULTS-run.md"))
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    tools = [t for t in args.tools.split(",") if t]
    venv = Path(args.venv)
    results: dict[str, dict[int, list[float]]] = {t: {} for t in tools}
    ssh_tools = [t for t in tools if t != "grapevine"]
    sshds: list[subprocess.Popen] = []
    try:
        if ssh_tools:
            if os.geteuid() != 0:
                raise SystemExit("the SSH tools need root here (a login user and sshd are set up)")
            key = ensure_user()
            addrs = host_addrs(max(sizes))
            print(f"starting sshd for {len(addrs)} loopback hosts", flush=True)
            sshds = start_sshds(addrs)
            write_known_hosts(addrs)
        with tempfile.TemporaryDirectory(prefix="gvbench-") as tmp:
            work = Path(tmp)
            for n in sizes:
                if "grapevine" in tools:
                    print(f"grapevine: {n} agents", flush=True)
                    results["grapevine"][n] = grapevine_times(n, args.repeat, args.state_dir)
                for t in ssh_tools:
                    results[t][n] = []
                for r in range(args.repeat + 1):  # round-robin, so load changes hit every tool alike
                    for tool in ssh_tools:
                        if tool == "fabric":
                            t, code, out = run_fabric(venv, key, addrs[:n], work)
                        elif tool == "pyinfra":
                            t, code, out = run_pyinfra(venv, key, addrs[:n], work)
                        else:
                            t, code, out = run_ansible(venv, key, addrs[:n], work, int(tool.split("-f")[1]))
                        if code != 0:
                            raise SystemExit(f"{tool} n={n} failed (exit {code}):\n{out[-3000:]}")
                        if r > 0:
                            results[tool][n].append(t)
                        LOADS.append(os.getloadavg()[0])
                        print(f"  {tool} n={n} run {r}: {t:.3f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        for p in sshds:
            p.terminate()
        for p in sshds:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)

    if args.merge:
        for tool, per in read_raw(Path(args.merge)).items():
            if tool not in results:
                results[tool] = per
    report(results, sizes, args)
    return 0


def read_raw(path: Path) -> dict[str, dict[int, list[float]]]:
    """The raw times listed at the end of a RESULTS file written by this script."""
    out: dict[str, dict[int, list[float]]] = {}
    for line in path.read_text().splitlines():
        if line.startswith("- ") and " n=" in line and ": " in line:
            head, _, values = line[2:].partition(": ")
            tool, _, n = head.partition(" n=")
            try:
                out.setdefault(tool, {})[int(n)] = [float(v) for v in values.split(",")]
            except ValueError:
                continue
    return out


def report(results: dict[str, dict[int, list[float]]], sizes: list[int], args: argparse.Namespace) -> None:
    lo, hi = sizes[0], sizes[-1]
    med = {t: {n: statistics.median(v) for n, v in per.items()} for t, per in results.items()}
    slope = {t: ((m[hi] - m[lo]) / (hi - lo) if hi > lo else float("nan")) for t, m in med.items()}
    lines = [
        "# Push-style run: grapevine vs SSH tools",
        "",
        f"`python benchmarks/bench_run.py --sizes {args.sizes} --repeat {args.repeat}` on "
        f"{platform.node()} ({os.cpu_count()} cores, Python {platform.python_version()}), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        + (f"; the SSH tools' times come from {args.merge}, measured earlier the same way" if args.merge else "")
        + ".",
        "",
        "Whole-process wall time of running `true` on every node until every result is back; "
        "median of the runs listed at the end, each tool after one warm-up run. Every node and every sshd is on this one machine, "
        "so all tools share its cores with the targets. The agents use the production (`lan`) gossip preset "
        "and keep their state on disk (a run id is fsynced before a node executes it). "
        f"1-minute load average during the runs: min {min(LOADS, default=0):.1f}, "
        f"median {statistics.median(LOADS) if LOADS else 0:.1f}, max {max(LOADS, default=0):.1f} "
        + ("(this invocation's runs; the machine is shared)." if args.merge else
           "(the machine is shared; every tool ran in the same window, the SSH tools round-robin)."),
        "",
        "| tool | " + " | ".join(f"{n} nodes (s)" for n in sizes) + " | per-node slope (ms/node) |",
        "|---|" + "---|" * len(sizes) + "---|",
    ]
    for t in results:
        lines.append(f"| {t} | " + " | ".join(f"{med[t][n]:.3f}" for n in sizes) + f" | {slope[t] * 1000:.2f} |")
    others = [t for t in results if t != "grapevine"]
    if "grapevine" in results and others:
        lines.append("")
        for n in sizes:
            best = min(others, key=lambda t: med[t][n])
            lines.append(f"- {n} nodes: fastest SSH tool {best} {med[best][n]:.3f} s; grapevine "
                         f"{med['grapevine'][n]:.3f} s ({med[best][n] / med['grapevine'][n]:.1f}x faster)")
        best_slope = min(others, key=lambda t: slope[t])
        lines.append(f"- per-node slope: grapevine {slope['grapevine'] * 1000:.2f} ms/node, lowest SSH tool "
                     f"{best_slope} {slope[best_slope] * 1000:.2f} ms/node "
                     f"(ratio {slope['grapevine'] / slope[best_slope]:.2f})")
    lines += ["", "Raw times (s):", ""]
    for t, per in results.items():
        for n, v in per.items():
            lines.append(f"- {t} n={n}: " + ", ".join(f"{x:.3f}" for x in v))
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    sys.exit(main())
