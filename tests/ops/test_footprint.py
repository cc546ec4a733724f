"""What a running agent loads: no OpenSSL on the default loop, metrics exposition still Prometheus text,
and the layers keep their one-way imports, deferred imports inside functions included.

Resident memory itself is measured in benchmarks/bench_mesh.py (RESULTS-mesh.md), not here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from grapevine.cli.localfleet import free_ports, wait_for
from tests.node.bundles import pack_bundle

REPO = Path(__file__).resolve().parents[2]
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.e+-]+|\+Inf|NaN)$')


def _mapped_libraries(pid: int) -> set[str]:
    return {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if ".so" in line}


def test_default_agent_maps_no_openssl_and_uvloop_agent_still_runs(fleet):
    p1, p2 = free_ports(2)
    plain = fleet.add("fp-asyncio", port=p1, join=[])
    uv = fleet.add("fp-uvloop", port=p2, join=[plain.address], extra=["--event-loop", "uvloop"])
    fleet.up(plain, uv)
    libs = _mapped_libraries(plain.proc.pid)
    assert not [lib for lib in libs if "libssl" in lib or "libcrypto" in lib], sorted(libs)
    assert not [lib for lib in libs if "uvloop" in lib]
    assert [lib for lib in _mapped_libraries(uv.proc.pid) if "uvloop" in lib]
    # both loops carry a bundle between them and converge it
    item = pack_bundle(fleet.keys, "fp/one", None, {"/etc/fp": "x\n"})
    plain.client().post("/v1/inject", data=item.encode())
    wait_for(lambda: all((a.root / "etc/fp").is_file() for a in (plain, uv)), 60, "the bundle on both loops",
             interval=0.2)


def test_metrics_are_prometheus_text(fleet):
    (port,) = free_ports(1)
    a = fleet.add("fp-metrics", port=port, join=[])
    fleet.up(a)
    item = pack_bundle(fleet.keys, "fp/metrics", None, {"/etc/fpm": "x\n"})
    a.client().post("/v1/inject", data=item.encode())
    wait_for(lambda: (a.root / "etc/fpm").is_file(), 60, "a converge", interval=0.2)
    wait_for(lambda: a.metric("grapevine_converge_duration_seconds_count") >= 1, 30, "the converge counted",
             interval=0.2)
    status, body = a.http_get("/metrics")
    text = body.decode()
    assert status == 200
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
        elif not line.startswith("# HELP "):
            assert SAMPLE.match(line), line
    assert types["grapevine_admissions_total"] == "counter"
    assert types["grapevine_items"] == "gauge"
    assert types["grapevine_converge_duration_seconds"] == "histogram"
    assert a.metric("grapevine_admissions_total", 'origin="local"') >= 1
    buckets = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("grapevine_converge_duration_seconds_bucket{")]
    assert buckets == sorted(buckets) and buckets[-1] == a.metric("grapevine_converge_duration_seconds_count")
    assert 'le="+Inf"' in text


LAYERS = {"gossip": 0, "policy": 1, "node": 2, "cli": 3}


def _grapevine_imports(path: Path) -> set[str]:
    """Every grapevine layer a module imports, at the top or inside a function."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = path.parent.name
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            names = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            names = [pkg] if n.level else [n.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "grapevine" and len(parts) > 1 and parts[1] in LAYERS:
                out.add(parts[1])
            elif n.__class__ is ast.ImportFrom and n.level and pkg in LAYERS:
                out.add(pkg)
    return out


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_imports_point_one_way(layer):
    """gossip <- policy <- node <- cli: no module imports a layer above its own, deferred imports included."""
    bad = []
    for path in sorted((REPO / layer).rglob("*.py")):
        for target in _grapevine_imports(path):
            if LAYERS[target] > LAYERS[layer]:
                bad.append(f"{path.relative_to(REPO)} imports grapevine.{target}")
    assert not bad, bad
