"""The fleet web page (`grapevine agent --ui`), in a real headless browser against a real 3-agent mesh.

Debian's chromium is driven by Playwright for Python (no browser download:
``executable_path=/usr/bin/chromium``). The page must list every agent, show
a bundle's version per node, fetch nothing but its own agent's address, and
show a newly injected version without being reloaded.
Set GRAPEVINE_UI_SCREENSHOT=docs/ui.png to also write the screenshot the
README shows.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from grapevine.cli.localfleet import free_ports, wait_for
from tests.node.bundles import pack_bundle

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
BUNDLE = "web/motd"


def _version(item) -> str:
    v = item.version
    return f"{v.wall_ms}.{v.counter}.{v.author}"


def _get(url: str, method: str = "GET") -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture
def mesh(fleet):
    ports = free_ports(4)
    ui = f"127.0.0.1:{ports[3]}"
    first = fleet.add("ui0", port=ports[0], join=[], tags={"role": "web"}, extra=["--ui", ui])
    rest = [fleet.add(f"ui{i}", port=ports[i], tags={"role": "web"}, join=[first.address]) for i in (1, 2)]
    agents = [first, *rest]
    fleet.up(*agents)
    ids = {a.node_id for a in agents}
    wait_for(lambda: set(first.client(30).post("/v1/fleet/query", {"kind": "status", "selector": ""})["answers"]) == ids,
             60, "every agent answering the fleet query", interval=0.5)
    return fleet, agents, f"http://{ui}"


def _inject_and_wait(fleet, agents, text: str):
    item = pack_bundle(fleet.keys, BUNDLE, "role=web", {"/etc/motd": text})
    agents[1].client().post("/v1/inject", data=item.encode())
    wait_for(lambda: all((a.root / "etc/motd").is_file() and (a.root / "etc/motd").read_text() == text for a in agents),
             60, "the bundle converged on every agent", interval=0.2)
    return item


def test_page_is_read_only_self_contained_and_serves_the_fleet_query(mesh):
    fleet, agents, url = mesh
    item = _inject_and_wait(fleet, agents, "v1\n")
    status, headers, body = _get(url + "/")
    assert status == 200 and b"/static/ui.js" in body
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert b"http://" not in body and b"https://" not in body  # nothing referenced outside the agent
    def fleet_doc():  # a node records its applied version just after writing the file: wait for the record
        status, _, body = _get(url + "/api/fleet")
        assert status == 200
        doc = json.loads(body)
        bundle = doc["fleet"]["bundles"].get(BUNDLE, {}) if doc.get("fleet") else {}
        return doc if bundle.get("applied") == 3 else None

    doc = wait_for(fleet_doc, 30, "the fleet page's query counting 3 nodes applied", interval=0.2)
    assert doc["error"] is None
    assert set(doc["fleet"]["members"]) == {a.node_id for a in agents}
    assert doc["fleet"]["bundles"][BUNDLE] == {"version": _version(item), "targeted": 3, "applied": 3}
    for path, method in (("/api/fleet", "POST"), ("/", "DELETE"), ("/api/fleet", "PUT")):
        assert _get(url + path, method)[0] == 405
    assert _get(url + "/static/../node.key")[0] == 404
    assert _get(url + "/static/index.html")[0] == 404  # only the named assets are served


def test_page_in_headless_chromium_shows_agents_versions_and_refreshes(mesh, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: .ci/run installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    fleet, agents, url = mesh
    v1 = _inject_and_wait(fleet, agents, "v1\n")
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url + "/?refresh=1")
            for a in agents:
                page.wait_for_selector(f'#members tr[data-node="{a.node_id}"]', timeout=30_000)
            table = page.locator(f'table[data-bundle="{BUNDLE}"]')
            table.wait_for(timeout=30_000)
            page.wait_for_function(
                "v => [...document.querySelectorAll('table[data-bundle] tbody tr')].filter("
                "r => r.textContent.includes(v) && r.textContent.includes('applied')).length === 3",
                arg=_version(v1), timeout=30_000)
            assert page.locator("#members tbody tr").count() == 3
            seen = int(page.locator("#updated").get_attribute("data-refreshes"))

            v2 = _inject_and_wait(fleet, agents, "v2\n")
            page.wait_for_function(
                "v => [...document.querySelectorAll('table[data-bundle] tbody tr')].filter("
                "r => r.textContent.includes(v) && r.textContent.includes('applied')).length === 3",
                arg=_version(v2), timeout=30_000)
            assert int(page.locator("#updated").get_attribute("data-refreshes")) > seen
            assert "3 converged" in page.locator("#summary").inner_text()
            page.screenshot(path=str(tmp_path / "ui.png"), full_page=True)
            target = os.environ.get("GRAPEVINE_UI_SCREENSHOT")
            if target:
                shutil.copy(tmp_path / "ui.png", target)
        finally:
            browser.close()
    assert requests and all(r.startswith(url + "/") for r in requests), sorted(set(requests))


def test_ui_address_in_use_is_a_clear_error(fleet):
    import socket

    p_agent, p_ui = free_ports(2)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", p_ui))
        busy.listen(1)
        a = fleet.add("ui-busy", port=p_agent, join=[], extra=["--ui", f"127.0.0.1:{p_ui}"])
        a.start()
        assert a.proc.wait(timeout=60) == 2
    assert f"ui: cannot listen on 127.0.0.1:{p_ui}" in a.log_path.read_text()


def test_bad_ui_address_is_refused_by_name(fleet):
    (port,) = free_ports(1)
    a = fleet.add("ui-bad", port=port, join=[], extra=["--ui", "localhost"])
    a.start()
    assert a.proc.wait(timeout=60) == 2
    assert "ui: expected HOST:PORT" in a.log_path.read_text()
