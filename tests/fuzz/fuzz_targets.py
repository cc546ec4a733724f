"""Fuzz targets: every decoder that takes bytes or text from outside.

Each target is a function of one ``bytes`` input. For every input it must
either succeed or refuse with the typed error of its layer (``GrapevineError``,
or ``FrameRefused`` for the sealed-frame opener, which the transport turns into
a 4xx). Any other exception, or an input that takes longer than the per-input
bound, is a finding.

Seeds are valid encodings built here with real keys and real signatures, so
the fuzzer starts from inputs that reach deep into each decoder instead of
bouncing off the first length check.

Used by tests/fuzz/test_fuzz.py (bounded runs in the test suite) and by
benchmarks/fuzz_all.py (longer runs), both through tests/fuzz/atheris_main.py.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import msgpack

from grapevine.gossip import codec
from grapevine.gossip import messages as m
from grapevine.gossip.config import GossipConfig
from grapevine.gossip.errors import GrapevineError
from grapevine.gossip.item import SignedItem, Version
from grapevine.gossip.node import GossipNode
from grapevine.node import config as agent_config
from grapevine.node.metrics import AgentMetrics
from grapevine.node.frames import pack_envelope, unpack_route_body
from grapevine.node.netkey import KeyRing, decode_key_text, encode_key_file
from grapevine.node.transport import FrameRefused, Transport
from grapevine.policy import authoring, catalog, runorder, selectors, trust, trust_files
from grapevine.policy.admission import Admission
from grapevine.policy.bundle import Bundle, pack
from grapevine.policy.keys import SigningKey

# Fixed key seeds: the seeds corpus (and so every run with one -seed) is reproducible.
AUTHOR = SigningKey(bytes(range(32)))
NODE = SigningKey(bytes(range(1, 33)))
NETKEY = bytes(range(2, 34))
NOW_MS = 1_700_000_000_000  # the clock every target runs at
FACTS = {"hostname": "web-01", "name": "web-01", "os": "debian", "role": "web", "env": "prod", "cpu_count": 2}
NODE_ID = "fuzz@127.0.0.1:7946"
PEER_ID = "peer@127.0.0.1:7947"

ROOT_OBJ = trust_files.build_root(
    serial=1, now_ms=NOW_MS - 1000, expires_days=30, admins=[AUTHOR.public], threshold=1,
    publishers=[(AUTHOR.public, "web/")],
    operators=[(AUTHOR.public, trust.OperatorScope(selector="role=web", actions=("run", "converge")))],
)
ROOT_ITEM = trust_files.init_root(ROOT_OBJ, [AUTHOR], NOW_MS - 1000)


def _bundle_doc() -> dict:
    return {
        "bundle": "web/nginx",
        "target": "role=web and env!=dev",
        "files": {"nginx.conf.j2": "worker_processes {{ facts.cpu_count }};\n"},
        "resources": [
            {"package": "nginx"},
            {"file": "/etc/nginx/nginx.conf", "source": "nginx.conf.j2", "mode": "0644",
             "require": ["package:nginx"], "notify": ["service:nginx"]},
            {"directory": "/srv/www"},
            {"symlink": "/srv/current", "to": "/srv/www"},
            {"service": "nginx", "running": True, "enabled": True},
            {"exec": "warm", "command": ["/bin/true"], "creates": "/srv/www/.warm", "when": "env=prod"},
        ],
    }


BUNDLE = Bundle.from_document(_bundle_doc(), "fuzz seed")
BUNDLE_ITEM = pack(BUNDLE, AUTHOR, NOW_MS - 500)


def _order(kind: str = "command") -> runorder.SignedOrder:
    action = {
        "command": runorder.RunAction.command(["/bin/echo", "hi"]),
        "shell": runorder.RunAction.shell_string("echo hi | wc -c"),
        "converge": runorder.RunAction.converge(["web/nginx@1.0"]),
    }[kind]
    order = runorder.RunOrder(
        run_id="0" * 32, origin=PEER_ID, selector="role=web", action=action, timeout_ms=5000,
        issued_ms=NOW_MS - 100, deadline_ms=NOW_MS + 60_000, operator=AUTHOR.key_id,
    )
    return runorder.SignedOrder.sign(order, AUTHOR)


def _result() -> runorder.SignedResult:
    res = runorder.RunResult(run_id="0" * 32, node=NODE_ID, exit_code=0, stdout=b"hi\n", stderr=b"",
                             duration_ms=3, report=msgpack.packb({"changed": 1}))
    return runorder.SignedResult.sign(res, NODE)


def _messages() -> list[m.Message]:
    d = bytes(16)
    return [
        m.Join(), m.ForwardJoin(joiner=PEER_ID, ttl=3), m.Welcome(), m.Neighbor(high_priority=True),
        m.NeighborReply(accepted=False), m.Disconnect(leaving=True),
        m.Shuffle(origin=PEER_ID, ttl=2, peers=(PEER_ID, "x@127.0.0.1:1")), m.ShuffleReply(peers=(PEER_ID,)),
        m.Ping(), m.Pong(), m.Push(hops=1, item=BUNDLE_ITEM),
        m.Ephemeral(msg_id=d, origin=PEER_ID, deadline_ms=NOW_MS + 5000, hops=0,
                    payload=msgpack.packb(["query", {"q": "1", "o": PEER_ID, "s": "", "k": "run"}])),
        m.IHave(entries=((d, 1),)), m.Graft(msg_ids=(d,)), m.Prune(), m.SyncRoot(root=d, count=2),
        m.SyncTop(digests=(d, d)), m.SyncLeaves(groups=((0, (d,)),)),
        m.SyncKeys(leaves=(0, 3), entries=(("bundle/web/nginx", NOW_MS, 0, AUTHOR.key_id, d),)),
        m.SyncItems(items=(BUNDLE_ITEM, ROOT_ITEM), want=("bundle/web/nginx",)),
    ]


# ------------------------------------------------------------------ targets


def t_codec_decode(data: bytes) -> None:
    msg = codec.decode(data)
    assert codec.decode(codec.encode(msg)) == msg, "decode(encode(msg)) must give the message back"


class _Core:
    """One gossip core with admission, fed every decoded message as a peer would send it."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.node = GossipNode(NODE_ID, config=GossipConfig.local(), rng=random.Random(7),
                               validator=Admission(ROOT_ITEM, node="fuzz"))
        self.node.publish(ROOT_ITEM, NOW_MS)
        self.node.join([PEER_ID], NOW_MS)

    def __call__(self, data: bytes) -> None:
        self.n += 1
        if self.n % 2000 == 0:  # bounded state, so one input's effect stays reproducible enough
            self.reset()
        msg = codec.decode(data)
        now = NOW_MS + self.n
        self.node.on_message(PEER_ID, msg, now)
        self.node.on_tick(now + 1000)


t_core_on_message = _Core()

class _AgentFrames:
    """A whole agent (SQLite state, admission, runs) fed gossip frame bodies the way its transport
    hands them over: ``_on_peer_frame`` decodes, runs the core and applies every effect. Outgoing
    traffic is switched off; tasks an input spawns are cancelled before the next input."""

    def __init__(self) -> None:
        self.agent = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def _setup(self) -> None:
        from grapevine.node.agent import Agent

        logging.getLogger("grapevine").setLevel(logging.CRITICAL)  # refusals are logged per input
        d = _TMP / f"agent-{os.getpid()}"
        cfg = agent_config.load_config(environ={}, flags={
            "name": "fuzz", "bind": "127.0.0.1:7946", "data_dir": str(d), "trust": str(_TRUST_FILE),
            "root": str(d / "root"), "gossip_preset": "local", "converge_on_start": False,
        })
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.agent = Agent(cfg, rng=random.Random(5))
        self.agent.transport.closed = True  # Send effects are dropped, never dialled

    def __call__(self, data: bytes) -> None:
        if self.agent is None:
            self._setup()
        self.loop.run_until_complete(self._one(data))

    async def _one(self, data: bytes) -> None:
        a = self.agent
        try:
            a._on_peer_frame(PEER_ID, data, len(data))
        finally:
            await asyncio.sleep(0)
            conv = getattr(a, "convergence", None)
            if conv is not None:
                conv.cancel()  # a converge an accepted bundle scheduled: not what is fuzzed here
            tasks = [t for t in a._tasks if not t.done()]
            for ext in a.extensions:
                tasks += [t for t in getattr(ext, "_tasks", ()) if not t.done()]
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)


t_agent_frame = _AgentFrames()

_RING = KeyRing()
_RING.install(NETKEY)
_PEER_KEY = SigningKey(bytes(range(2, 34)))  # the node key of PEER_ID in the frame seeds (fixed: seeds replay)
_TRANSPORT = Transport(node_id=NODE_ID, ring=_RING, metrics=AgentMetrics(), on_message=lambda *a: None,
                       on_send_failed=lambda p: None)


def t_frame_open(data: bytes) -> None:
    """The daemon's path for one received frame: open the seal, check the envelope, decode the message."""
    try:
        sender, body = _TRANSPORT.open(data)
    except FrameRefused:
        return
    if isinstance(body, bytes):
        codec.decode(body)


def t_frame_plaintext(data: bytes) -> None:
    """As ``t_frame_open`` but sealed with the fleet key first: what a peer holding the key can send."""
    t_frame_open(_RING.seal(data))


def t_item_decode(data: bytes) -> None:
    item = SignedItem.decode(data)
    Admission(ROOT_ITEM)(item, None, NOW_MS)


def t_item_file(data: bytes) -> None:
    """A ``.gv`` file handed to the CLI or the agent: canonical item, then first-root checks."""
    item = trust_files.item_from_file_bytes(data)
    if item.key == trust.ROOT_KEY:
        trust.check_first_root(item)
        trust.verify_succession(ROOT_OBJ, item, NOW_MS, ROOT_ITEM)


def t_bundle_decode(data: bytes) -> None:
    b = Bundle.decode(data)
    assert Bundle.decode(b.encode()) == b
    selectors.parse(b.target)
    catalog.validate_bundles([b])


def t_trust_root(data: bytes) -> None:
    root = trust.TrustRoot.decode(data)
    assert trust.TrustRoot.decode(root.encode()) == root
    for kid in root.operators:
        for sel in root.operator_selectors(kid, "run"):
            selectors.parse(sel)


def t_run_order(data: bytes) -> None:
    signed = runorder.SignedOrder.decode(data)
    runorder.check_order(signed, root=ROOT_OBJ, now_ms=NOW_MS, facts=FACTS)


class _NotABody(GrapevineError):
    """Bytes the envelope decoder refuses before any route handler sees them."""


def _route_body(data: bytes) -> object:
    """What a route handler receives: the envelope body as the transport decodes it (limits from gossip/wire.py)."""
    try:
        return unpack_route_body(data)
    except FrameRefused as exc:  # the transport answers 400 BadRouteBody for these
        raise _NotABody(str(exc)) from None


def t_run_order_route(data: bytes) -> None:
    """The body of POST /v1/peer/run.order after the envelope: any msgpack value."""
    body = _route_body(data)
    wire = body.get("order") if isinstance(body, dict) else None
    signed = runorder.SignedOrder.from_wire(wire)
    runorder.check_order(signed, root=ROOT_OBJ, now_ms=NOW_MS, facts=FACTS)


def t_run_result(data: bytes) -> None:
    """The body of POST /v1/peer/run.result: any msgpack value, verified against the node's key."""
    signed = runorder.SignedResult.from_wire(_route_body(data))
    res = signed.verify(NODE.public, run_id="0" * 32, node=NODE_ID)
    res.to_json()


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def t_selector(data: bytes) -> None:
    text = _text(data)
    sel = selectors.parse(text)
    sel.matches(FACTS)
    again = selectors.parse(str(sel))
    assert again.tree == sel.tree, f"canonical spelling {str(sel)!r} parses to a different selector"


# Policy and config decoders read files: keep them in memory-backed /dev/shm when there is one,
# so a disk busy with other work does not decide how many inputs a target gets.
# The runner sets GRAPEVINE_FUZZ_TMP and removes it; an in-process import cleans up at exit.
if os.environ.get("GRAPEVINE_FUZZ_TMP"):
    _TMP = Path(os.environ["GRAPEVINE_FUZZ_TMP"])
else:
    _TMP = Path(tempfile.mkdtemp(prefix="grapevine-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    atexit.register(shutil.rmtree, _TMP, True)


def _policy(data: bytes, suffix: str) -> None:
    path = _TMP / f"policy-{os.getpid()}{suffix}"
    path.write_bytes(data)
    docs = authoring.load_policy_file(path)
    bundles = [Bundle.from_document(d, str(path)) for d in docs]
    for b in bundles:
        assert Bundle.decode(b.encode()) == b
        selectors.parse(b.target)
    catalog.validate_bundles(bundles)


def t_policy_yaml(data: bytes) -> None:
    _policy(data, ".yaml")


def t_policy_toml(data: bytes) -> None:
    _policy(data, ".toml")


_TRUST_FILE = _TMP / "root.gv"
trust_files.write_item_file(_TRUST_FILE, ROOT_ITEM)


def t_agent_config(data: bytes) -> None:
    path = _TMP / f"agent-{os.getpid()}.toml"
    path.write_bytes(data)
    cfg = agent_config.load_config(config_file=path, environ={}, flags={})
    cfg.gossip_config()
    _ = cfg.node_id


def t_netkey_file(data: bytes) -> None:
    decode_key_text(_text(data), "fuzz")


# ------------------------------------------------------------------ seeds


def _seeds_codec() -> list[bytes]:
    return [codec.encode(x) for x in _messages()]


def _seeds_frames() -> list[bytes]:
    # signed v2 envelopes from a peer to the fuzzed node (node/frames.py)
    plain = [pack_envelope(_PEER_KEY, PEER_ID, NODE_ID, codec.encode(x)) for x in _messages()[:12]]
    return plain + [b"G\x00" + bytes(48) + p for p in plain[:2]]


def _seeds_frames_sealed() -> list[bytes]:
    return [_RING.seal(p) for p in _seeds_frames()[:6]] + [b"G\x02" + bytes(48)]


def _seeds_items() -> list[bytes]:
    return [BUNDLE_ITEM.encode(), ROOT_ITEM.encode()]


def _seeds_bundles() -> list[bytes]:
    small = Bundle(name="a", resources=({"file": "/x", "content": "y"},))
    return [BUNDLE.encode(), small.encode()]


def _seeds_roots() -> list[bytes]:
    return [ROOT_OBJ.encode()]


def _seeds_orders() -> list[bytes]:
    return [_order(k).encode() for k in ("command", "shell", "converge")]


def _seeds_order_routes() -> list[bytes]:
    return [msgpack.packb({"order": _order(k).to_wire()}, use_bin_type=True) for k in ("command", "converge")]


def _seeds_results() -> list[bytes]:
    return [msgpack.packb(_result().to_wire(), use_bin_type=True)]


def _seeds_selectors() -> list[bytes]:
    return [s.encode() for s in (
        "role=web", "role=web and env!=prod", "os in (debian, ubuntu)", "name~=web-*",
        "not (a=1 or b!='x y') and c in (\"q\", r)", "",
    )]


def _seeds_yaml() -> list[bytes]:
    import yaml

    one = yaml.safe_dump(_bundle_doc(), sort_keys=False).encode()
    two = b"bundle: a/b\nresources:\n  - file: /etc/motd\n    content: hi\n---\nbundle: a/c\n"
    return [one, two, b"bundles:\n  - bundle: x\n    target: role=db\n"]


def _seeds_toml() -> list[bytes]:
    return [
        b'bundle = "web/motd"\ntarget = "role=web"\n[[resources]]\nfile = "/etc/motd"\ncontent = "hi"\n',
        b'[[bundles]]\nbundle = "a"\n[[bundles.resources]]\npackage = "nginx"\n[[bundles]]\nbundle = "b"\n',
    ]


def _seeds_config() -> list[bytes]:
    example = (Path(agent_config.__file__).parent / "agent.example.toml").read_bytes()
    example = example.replace(b'"/etc/grapevine/root.gv"', f'"{_TRUST_FILE}"'.encode())
    example = example.replace(b'network_key = "/etc/grapevine/fleet.netkey"', b"")
    simple = f'name = "n1"\nbind = "127.0.0.1:7946"\ndata_dir = "/tmp/x"\ntrust = "{_TRUST_FILE}"\n' \
             '[gossip]\nactive_view_size = 4\n[tags]\nrole = "web"\n'
    return [example, simple.encode()]


def _seeds_netkey() -> list[bytes]:
    return [encode_key_file(NETKEY).encode()]


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    name: str
    fn: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    max_len: int  # longest input the fuzzer makes: a little above the longest seed
    refusals: tuple[type[BaseException], ...] = (GrapevineError,)


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target(name="codec.decode", fn=t_codec_decode, seeds=_seeds_codec, max_len=8192),
    Target(name="core.on_message", fn=t_core_on_message, seeds=_seeds_codec, max_len=8192),
    Target(name="agent.frame", fn=t_agent_frame, seeds=_seeds_codec, max_len=8192,
           refusals=(GrapevineError, FrameRefused)),
    Target(name="frame.open", fn=t_frame_open, seeds=_seeds_frames_sealed, max_len=8192,
           refusals=(GrapevineError, FrameRefused)),
    Target(name="frame.plaintext", fn=t_frame_plaintext, seeds=_seeds_frames, max_len=8192,
           refusals=(GrapevineError, FrameRefused)),
    Target(name="item.decode", fn=t_item_decode, seeds=_seeds_items, max_len=8192),
    Target(name="item.file", fn=t_item_file, seeds=_seeds_items, max_len=8192),
    Target(name="bundle.decode", fn=t_bundle_decode, seeds=_seeds_bundles, max_len=8192),
    Target(name="trust.root", fn=t_trust_root, seeds=_seeds_roots, max_len=4096),
    Target(name="runorder.order", fn=t_run_order, seeds=_seeds_orders, max_len=4096),
    Target(name="runorder.route", fn=t_run_order_route, seeds=_seeds_order_routes, max_len=4096),
    Target(name="runorder.result", fn=t_run_result, seeds=_seeds_results, max_len=4096),
    Target(name="selectors.parse", fn=t_selector, seeds=_seeds_selectors, max_len=1024),
    Target(name="policy.yaml", fn=t_policy_yaml, seeds=_seeds_yaml, max_len=4096),
    Target(name="policy.toml", fn=t_policy_toml, seeds=_seeds_toml, max_len=4096),
    Target(name="config.toml", fn=t_agent_config, seeds=_seeds_config, max_len=4096),
    Target(name="netkey.file", fn=t_netkey_file, seeds=_seeds_netkey, max_len=256),
)}


def check_one(target: Target, data: bytes) -> None:
    """Run ``target`` on ``data``; the typed refusals pass, anything else propagates."""
    try:
        target.fn(data)
    except target.refusals:
        pass


def write_seeds(target: Target, directory: str | os.PathLike) -> int:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    seeds = target.seeds()
    for i, s in enumerate(seeds):
        (d / f"seed-{i:03d}").write_bytes(s)
    return len(seeds)
