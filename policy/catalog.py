"""The catalog: every resource of a set of bundles, validated and ordered.

``build_catalog(bundles)`` turns resource entries into resource objects,
parses every selector, resolves ``require``/``notify`` (across bundles too)
and computes one deterministic order. Anything wrong is a ``PolicyError``
naming the bundle, the resource and the reason, raised before any resource
is looked at on disk. ``validate_bundles`` is the same check for authors
(``grapevine bundle pack``).

Order: ``require: [X]`` puts X first; ``notify: [Y]`` puts Y after the
notifier (a refresh only makes sense once the change is made). Among
resources free to go, the one declared first goes first (bundles by name,
then declaration order), so the same policy always converges in the same
order. A cycle is refused naming every resource in it.

Two bundles that declare the same resource do not reach ``build_catalog`` on
a node: ``resolve_claims`` first keeps the earlier claim and refuses the
later bundle as a whole (``Conflict``, naming both), so one bundle cannot
freeze another by declaring its resource. Earlier is decided from the
bundles' current version stamps, the same on every node (see there).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Iterable, Sequence

from grapevine.gossip.errors import PolicyError, Reason

from . import selectors
from .resources import Resource, build, entry_type, ref_list

__all__ = ["Entry", "Catalog", "Conflict", "build_catalog", "resolve_claims", "validate_bundles"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    resource: Resource
    bundle: str
    index: int  # position within its bundle, 1-based
    when: selectors.Selector
    requires: tuple[str, ...]
    notifies: tuple[str, ...]

    @property
    def id(self) -> str:
        return self.resource.id


@dataclass(frozen=True, slots=True, kw_only=True)
class Catalog:
    entries: dict[str, Entry]
    order: tuple[str, ...]  # topological, deterministic
    dependents: dict[str, tuple[str, ...]]  # id -> ids that must wait for it (require or notify)
    notified_by: dict[str, tuple[str, ...]]  # id -> ids whose change refreshes it


def _label(entry: dict, index: int) -> str:
    try:
        rtype = entry_type(entry)
        return f"resource {rtype}:{entry[rtype]}"
    except PolicyError:
        first = next(iter(entry.items()), ("?", "?"))
        return f"resource #{index} ({first[0]}: {first[1]})"


def _describe_bundle(bundle: object) -> str:
    return f"bundle {getattr(bundle, 'name', '?')!r}"


def build_catalog(bundles: Sequence, *, known_elsewhere: Iterable[str] = ()) -> Catalog:
    """Validate and order the resources of ``bundles`` (Bundle objects).

    ``known_elsewhere`` lists resource ids that exist in bundles not part of
    this set (for example bundles that do not target this node): a require
    of one of them is satisfied rather than an error.
    """
    entries: dict[str, Entry] = {}
    position: dict[str, tuple[str, int]] = {}
    for bundle in sorted(bundles, key=lambda b: b.name):
        where = _describe_bundle(bundle)
        if bundle.target is not None:
            try:
                selectors.parse(bundle.target)
            except PolicyError as exc:
                raise PolicyError(f"{where}: target: {exc}") from None
        for i, raw in enumerate(bundle.resources, start=1):
            label = _label(raw, i)
            try:
                res = build(raw, bundle=bundle.name, files=bundle.files)
                when = selectors.parse(raw.get("when"))
                requires = ref_list(raw.get("require"), "require")
                notifies = ref_list(raw.get("notify"), "notify")
            except PolicyError as exc:
                raise PolicyError(f"{where}: {label}: {exc}") from None
            if res.id in entries:
                other = entries[res.id].bundle
                raise PolicyError(f"{where}: {label}: declared twice (also in bundle {other!r})")
            entries[res.id] = Entry(resource=res, bundle=bundle.name, index=i, when=when, requires=requires, notifies=notifies)
            position[res.id] = (bundle.name, i)
    elsewhere = set(known_elsewhere)
    after: dict[str, set[str]] = {rid: set() for rid in entries}  # rid -> ids that come after it
    notified_by: dict[str, list[str]] = {}
    for rid, e in entries.items():
        for kind, refs in (("require", e.requires), ("notify", e.notifies)):
            for ref in refs:
                if ref not in entries:
                    if ref in elsewhere:
                        continue
                    raise PolicyError(
                        f"{_describe_bundle_name(e.bundle)}: resource {rid}: {kind} {ref!r}: no such resource"
                        " (a resource id is type:name, e.g. package:nginx)"
                    )
                if kind == "require":
                    after[ref].add(rid)
                else:
                    after[rid].add(ref)
                    notified_by.setdefault(ref, []).append(rid)
    order = _toposort(entries, after, position)
    return Catalog(
        entries=entries,
        order=order,
        dependents={rid: tuple(sorted(s, key=position.__getitem__)) for rid, s in after.items()},
        notified_by={rid: tuple(sorted(v, key=position.__getitem__)) for rid, v in notified_by.items()},
    )


def _describe_bundle_name(name: str) -> str:
    return f"bundle {name!r}"


def _toposort(entries: dict[str, Entry], after: dict[str, set[str]], position: dict[str, tuple[str, int]]) -> tuple[str, ...]:
    indegree = {rid: 0 for rid in entries}
    for rid, nexts in after.items():
        for n in nexts:
            indegree[n] += 1
    ready = [(position[rid], rid) for rid, d in indegree.items() if d == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, rid = heapq.heappop(ready)
        order.append(rid)
        for n in after[rid]:
            indegree[n] -= 1
            if indegree[n] == 0:
                heapq.heappush(ready, (position[n], n))
    if len(order) != len(entries):
        left = {rid for rid, d in indegree.items() if d > 0}
        raise PolicyError(_cycle_message(left, after, entries, position))
    return tuple(order)


def _cycle_message(left: set[str], after: dict[str, set[str]], entries: dict[str, Entry], position: dict) -> str:
    """Name every resource on a cycle (strongly connected components among ``left``)."""
    comps = _strong_components(left, after)
    cycles = [sorted(c, key=position.__getitem__) for c in comps if len(c) > 1 or next(iter(c)) in after[next(iter(c))]]
    cycles.sort(key=lambda c: position[c[0]])
    parts = []
    for members in cycles:
        path = _one_cycle(members, after, position)
        bundles = sorted({entries[m].bundle for m in members})
        parts.append(
            f"dependency cycle in bundle(s) {', '.join(bundles)}: {' -> '.join(path)}"
            f" (members: {', '.join(members)})"
        )
    return "; ".join(parts) or "dependency cycle among: " + ", ".join(sorted(left))


def _strong_components(nodes: set[str], after: dict[str, set[str]]) -> list[set[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[set[str]] = []
    counter = 0
    for start in sorted(nodes):
        if start in index:
            continue
        work = [(start, iter(sorted(n for n in after[start] if n in nodes)))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            advanced = False
            for n in it:
                if n not in index:
                    index[n] = low[n] = counter
                    counter += 1
                    stack.append(n)
                    on_stack.add(n)
                    work.append((n, iter(sorted(m for m in after[n] if m in nodes))))
                    advanced = True
                    break
                if n in on_stack:
                    low[node] = min(low[node], index[n])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = set()
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.add(m)
                    if m == node:
                        break
                comps.append(comp)
    return comps


def _one_cycle(members: list[str], after: dict[str, set[str]], position: dict) -> list[str]:
    """A closed walk from the first member back to it, inside the component."""
    inside = set(members)
    start = members[0]
    prev: dict[str, str] = {}
    queue = [start]
    seen = {start}
    while queue:
        node = queue.pop(0)
        for n in sorted(after[node] & inside, key=position.__getitem__):
            if n == start:
                chain = [node]
                while chain[-1] != start:
                    chain.append(prev[chain[-1]])
                return list(reversed(chain)) + [start]
            if n not in seen:
                seen.add(n)
                prev[n] = node
                queue.append(n)
    return members + [start]


@dataclass(frozen=True, slots=True, kw_only=True)
class Conflict:
    """Bundle ``refused`` declares ``resource``, which the earlier bundle ``kept`` already claims."""

    resource: str
    kept: str
    refused: str
    refused_resource: str  # as the later bundle spells it (a path may be written differently)

    @property
    def reason(self) -> Reason:
        return Reason.CONFLICT

    def detail(self) -> str:
        same = "" if self.refused_resource == self.resource else f" (as {self.refused_resource})"
        return (f"bundle {self.refused!r} declares {self.resource}{same}, already claimed by the earlier bundle"
                f" {self.kept!r}; {self.refused!r} is not applied until one of them drops it")

    def to_json(self) -> dict:
        return {"bundle": self.refused, "reason": self.reason, "resource": self.resource, "kept": self.kept,
                "detail": self.detail()}


def _claims(bundle: object) -> list[tuple[str, str]]:
    """(claim key, resource id) for every resource of ``bundle``. File, directory and symlink
    resources claim their normalised path, whatever the type: they are one object on disk."""
    from .grants import PATH_TYPES, normalise

    out = []
    for raw in getattr(bundle, "resources", ()):
        try:
            rtype = entry_type(raw)
        except PolicyError:
            continue  # the catalog names it when the bundle is built
        name = raw.get(rtype)
        if not isinstance(name, str):
            continue
        rid = f"{rtype}:{name}"
        key = "path:" + normalise(name) if rtype in PATH_TYPES and name.startswith("/") else rid
        out.append((key, rid))
    return out


def resolve_claims(versioned: Iterable[tuple[object, object]]) -> tuple[list, list[Conflict]]:
    """Split ``(bundle, version)`` pairs into the bundles to apply and the refused later claims.

    When two bundles declare the same resource, the *earlier* bundle keeps it
    and the *later* one is refused as a whole (``Conflict``, naming both), so
    one bundle cannot freeze another by declaring its resource. Earlier means
    the smaller current version stamp (wall ms, counter, author key id), then
    the smaller name: every node holding the same versions decides the same
    way, without talking to the others. Bundles are claimed in that order,
    and a refused bundle claims nothing. Result order: the bundles as given.

    The stamp is the bundle's *current* version: re-injecting the earlier
    bundle while the conflict stands makes it the later claim, and a
    publisher chooses its own stamps (it may backdate a new bundle). The
    claim settles accidents between trusted publishers; keeping publishers
    apart is the job of their grants (disjoint ``paths`` and ``types``).
    Resolve a reported Conflict by removing the resource from one bundle.
    """
    pairs = list(versioned)
    order = sorted(range(len(pairs)), key=lambda i: (tuple(pairs[i][1]), pairs[i][0].name))
    owner: dict[str, tuple[str, str]] = {}  # claim key -> (bundle name, resource id)
    refused: dict[int, Conflict] = {}
    for i in order:
        bundle = pairs[i][0]
        claims = _claims(bundle)
        clash = next(((key, rid) for key, rid in claims if key in owner and owner[key][0] != bundle.name), None)
        if clash is not None:
            kept, kept_rid = owner[clash[0]]
            refused[i] = Conflict(resource=kept_rid, kept=kept, refused=bundle.name, refused_resource=clash[1])
            continue
        for key, rid in claims:
            owner.setdefault(key, (bundle.name, rid))
    kept_bundles = [pairs[i][0] for i in range(len(pairs)) if i not in refused]
    return kept_bundles, [refused[i] for i in sorted(refused, key=lambda i: pairs[i][0].name)]


def validate_bundles(bundles: Sequence) -> None:
    """Raise PolicyError naming bundle, resource and reason for a broken policy."""
    build_catalog(bundles)
