"""``grapevine rollout status|abort|resume NAME``, and the driver that ``inject`` runs for a staged bundle.

The driver runs here, in the process that holds the publisher key: it
discovers the bundle's targets through the local agent (a fleet query with
the bundle's target selector), feeds the ``Driver`` machine
(policy/rollout_machines.py) the reports the agent collects for it, and
signs and injects each record the machine publishes. If this process dies,
no further stage opens: the rollout is paused until ``rollout resume`` (from
any node, with a publisher key of the bundle) takes it over, or ``rollout
abort`` halts it and sends every node that applied the version back.

Exit status: 0 the rollout completed (or, for ``status``, is not halted), 1 it
halted or was rolled back, 2 usage or bad input.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from grapevine.cli.client import AgentClient, AgentRefused, agent_client, agent_option
from grapevine.cli.output import emit_json, json_option
from grapevine.gossip.errors import ConfigError
from grapevine.gossip.item import SignedItem, Version
from grapevine.policy.bundle import BUNDLE_KEY_PREFIX, Bundle
from grapevine.policy.rollout import ROLLOUT_KEY_PREFIX, RolloutRecord, sign_record
from grapevine.policy.rollout_machines import Driver, DriverConfig, Publish, RolloutStateError, abort_record

POLL_S = 0.2  # the driver reads its reports this often
DISCOVERY_TIMEOUT_S = 30.0


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Driving:
    """One driver attached to the local agent: discovery, the machine, signing and injecting its records."""

    def __init__(self, client: AgentClient, key: Any, bundle: Bundle, version: Version, *, echo: bool,
                 config: DriverConfig | None = None) -> None:
        self.client, self.key, self.bundle, self.version = client, key, bundle, version
        self.echo = echo
        self.config = config
        self.me = client.get("/v1/run/origin")["node_id"]
        self.last: Version | None = None  # the stored record's item version: ours are stamped after it
        self.since = 0
        self.drv: Driver | None = None
        self.lost = ""  # why this driver stopped without finishing (taken over, aborted elsewhere)

    def targets(self) -> list[str]:
        answer = self.client.post("/v1/fleet/query", {"kind": "status", "selector": self.bundle.target or ""},
                                  timeout=DISCOVERY_TIMEOUT_S)
        return sorted(answer.get("answers") or {})

    def say(self, text: str) -> None:
        if self.echo:
            click.echo(text, err=True)

    def publish(self, effects: list) -> None:
        for e in effects:
            if not isinstance(e, Publish):
                continue
            item = sign_record(e.record, self.key, wall_ms(), after=self.last)
            try:
                self.client.post("/v1/inject", data=item.encode())
            except AgentRefused as exc:
                self.lost = f"the record was refused: {exc}"
                return
            self.last = item.version
            r = e.record
            if r.state == "running":
                planned = self.drv.plan.stages[r.stage] if self.drv else "?"
                self.say(f"rollout {r.bundle}: stage {r.stage + 1} open ({planned}, {r.targets} targets)")
            else:
                self.say(f"rollout {r.bundle}: {r.state}{': ' + r.reason if r.reason else ''}")

    def start(self, record: RolloutRecord | None = None, record_version: Version | None = None) -> None:
        plan = self.bundle.rollout
        assert plan is not None
        targets = self.targets()
        self.say(f"rollout {self.bundle.name}: {len(targets)} target(s) found; plan {plan.to_document()}")
        self.last = record_version
        if record is None:
            self.drv = Driver(self.bundle.name, self.version, plan, targets, self.me, wall_ms(), config=self.config)
        else:
            self.drv = Driver.resume(record, plan, targets, self.me, wall_ms(), config=self.config)
        self.publish(self.drv.start(wall_ms()))

    def step(self) -> None:
        """Read new reports, feed them to the machine, publish what it decides."""
        drv = self.drv
        assert drv is not None
        q = f"bundle={quote(self.bundle.name)}&version={quote(str(self.version))}&since={self.since}"
        got = self.client.get(f"/v1/rollout/reports?{q}")
        rec = got.get("record")
        if rec and rec.get("version") == str(self.version) and (rec.get("driver") != self.me or rec.get("term") != drv.term
                                                                 or (rec.get("state") != "running" and not drv.done)):
            self.lost = (f"the rollout is now {rec.get('state')}, driven by {rec.get('driver')} (term {rec.get('term')})"
                         + (f": {rec.get('reason')}" if rec.get("reason") else ""))
            return
        if got.get("record_version"):
            stored = Version.parse(got["record_version"])
            self.last = stored if self.last is None or stored > self.last else self.last
        now = wall_ms()
        for node, state, detail, seq in got.get("reports", []):
            self.since = max(self.since, int(seq))
            self.publish(drv.on_report(node, state, now, detail))
            if drv.done:
                return
        self.publish(drv.on_tick(wall_ms()))

    def run(self) -> dict:
        drv = self.drv
        assert drv is not None
        while not drv.done and not self.lost:
            self.step()
            if not drv.done and not self.lost:
                time.sleep(POLL_S)
        doc = drv.status()
        if self.lost:  # someone else decides now: say what the record says
            rec = self.client.get(f"/v1/rollout/status?bundle={quote(self.bundle.name)}")
            doc["state"], doc["reason"] = rec.get("state", "paused"), self.lost
        return doc


def drive_injected(client: AgentClient, key_path: Path, item: SignedItem, *, echo: bool) -> dict:
    """Drive the rollout of a just injected bundle to its end (inject with a plan)."""
    from grapevine.policy.keys import SigningKey

    bundle = Bundle.decode(item.payload)
    d = Driving(client, SigningKey.load(key_path), bundle, item.version, echo=echo)
    d.start()
    return d.run()


def rollout_exit(doc: dict) -> int:
    """``rollout status``: 1 once halted or rolled back."""
    return 1 if doc.get("state") in ("halted", "rolled_back") else 0


# -- the commands --------------------------------------------------------------------------
def fetch_status(client: AgentClient, name: str) -> dict:
    return client.get(f"/v1/rollout/status?bundle={quote(name)}")


def stored_record(client: AgentClient, name: str, status: dict) -> tuple[RolloutRecord, Version]:
    """The record ``status`` describes, read back as the signed item the agent holds."""
    if not status.get("record_version"):
        raise ConfigError(f"the rollout of {name} has no stage record yet: nothing to take over or abort")
    got = client.get(f"/v1/item?key={quote(ROLLOUT_KEY_PREFIX + name)}&version={quote(status['record_version'])}")
    item = SignedItem.decode(base64.b64decode(got["item"]))
    return RolloutRecord.decode(item.payload), item.version


def show_status(doc: dict) -> None:
    click.echo(f"rollout {doc['bundle']} version {doc['version']}: {doc['state']}"
               + (f" (driver {doc['driver']}, term {doc['term']})" if doc.get("driver") else ""))
    for i, s in enumerate(doc.get("stages", [])):
        click.echo(f"  stage {i + 1} {s['planned']:>6} ({s['size']} nodes) {'open  ' if s['open'] else 'closed'}"
                   f"  applied {s['applied']}  healthy {s['healthy']}  failed {s['failed']}")
    if doc.get("reason"):
        click.echo(f"  reason: {doc['reason']}")


@click.group("rollout")
def rollout() -> None:
    """Staged rollouts: status, abort, resume."""


@rollout.command("status")
@click.argument("name")
@agent_option
@json_option
def status(name: str, agent_socket: str | None, as_json: bool) -> int:
    """Where the rollout of bundle NAME stands (any node answers)."""
    doc = fetch_status(agent_client(agent_socket), name)
    emit_json(doc) if as_json else show_status(doc)
    return rollout_exit(doc)


@rollout.command("abort")
@click.argument("name")
@click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A publisher key of the bundle.")
@click.option("--reason", default="", help="Why (shown by `rollout status`).")
@agent_option
@json_option
def abort(name: str, key_path: Path, reason: str, agent_socket: str | None, as_json: bool) -> int:
    """Halt the rollout of NAME and send every node that applied the new version back."""
    from grapevine.policy.keys import SigningKey

    client = agent_client(agent_socket)
    doc = fetch_status(client, name)
    record, stored = stored_record(client, name, doc)
    key = SigningKey.load(key_path)
    try:
        new = abort_record(record, reason or f"aborted with key {key.key_id}")
    except RolloutStateError as exc:
        raise ConfigError(str(exc)) from None
    client.post("/v1/inject", data=sign_record(new, key, wall_ms(), after=stored).encode())
    doc = fetch_status(client, name)
    emit_json(doc) if as_json else show_status(doc)
    return 0


@rollout.command("resume")
@click.argument("name")
@click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A publisher key of the bundle.")
@agent_option
@json_option
def resume(name: str, key_path: Path, agent_socket: str | None, as_json: bool) -> int:
    """Take over a paused rollout of NAME from this node and drive it to its end."""
    from grapevine.policy.keys import SigningKey

    client = agent_client(agent_socket)
    doc = fetch_status(client, name)
    if doc["state"] != "paused":
        raise ConfigError(f"the rollout of {name} is {doc['state']}: only a paused rollout can be resumed")
    record, stored = stored_record(client, name, doc)
    got = client.get(f"/v1/item?key={quote(BUNDLE_KEY_PREFIX + name)}&version={quote(str(record.version))}")
    bundle = Bundle.decode(SignedItem.decode(base64.b64decode(got["item"])).payload)
    if bundle.rollout is None:
        raise ConfigError(f"bundle {name} version {record.version} carries no rollout plan")
    d = Driving(client, SigningKey.load(key_path), bundle, record.version, echo=not as_json)
    d.start(record, stored)
    final = d.run()
    emit_json(final) if as_json else show_status(final)
    return 1 if d.lost else rollout_exit(final)


def staged(items: list) -> list[SignedItem]:
    """The bundle items that carry a rollout plan."""
    out = []
    for item in items:
        if item.key.startswith(BUNDLE_KEY_PREFIX) and Bundle.decode(item.payload).rollout is not None:
            out.append(item)
    return out
