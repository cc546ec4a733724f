"""The store on disk agrees with the store in memory across a real agent restart."""

from __future__ import annotations

import base64
import time

import pytest

from grapevine.cli.localfleet import free_ports, wait_for
from grapevine.gossip.item import SignedItem
from grapevine.gossip.store import is_newer
from grapevine.node.state import State
from tests.node.bundles import pack_bundle

pytestmark = pytest.mark.slow


def test_the_winner_of_a_same_version_tie_is_still_live_after_a_restart(fleet):
    """The agent's API and peers refuse an item whose version equals the stored one (admission
    answers Stale), so the tie is written the way the daemon writes an accepted item,
    ``State.put_items``, into the stopped agent's real database; the agent then restarts on it."""
    [port] = free_ports(1)
    a = fleet.add("tie", port=port, join=[])
    fleet.up(a)
    now = time.time_ns() // 1_000_000
    one = pack_bundle(fleet.keys, "app/tie", None, {"/etc/tie": "one\n"}, now_ms=now)
    two = pack_bundle(fleet.keys, "app/tie", None, {"/etc/tie": "two\n"}, now_ms=now)
    assert one.version == two.version and one.digest() != two.digest()
    loser, winner = (one, two) if is_newer(two, one) else (two, one)
    a.client().post("/v1/inject", data=loser.encode())
    wait_for(lambda: (a.root / "etc/tie").is_file(), 30, "the first item applied")
    assert a.stop() == 0

    st = State(a.data_dir)
    st.put_items([(winner, now, "peer@127.0.0.1:1")], replicated=True)
    st.put_items([(loser, now, "peer@127.0.0.1:2")], replicated=True)  # the loser again: changes nothing
    st.close()

    a.start()
    a.wait_ready()
    doc = a.client().get(f"/v1/item?key=bundle/app/tie&version={winner.version}")
    assert SignedItem.decode(base64.b64decode(doc["item"])).digest() == winner.digest(), "the loser came back"
    want = "two\n" if winner is two else "one\n"
    wait_for(lambda: (a.root / "etc/tie").read_text() == want, 30, "the winner applied after the restart")
