"""The convergence engine: plan, then apply, in dependency order.

``converge(bundles, root=..., facts=...)`` runs in three steps:

1. select: bundles whose ``target`` matches the facts, then resources whose
   ``when`` matches;
2. validate and prepare everything (catalog, selectors, references, cycles,
   templates rendered once with the facts). A ``PolicyError`` here stops the
   converge before a single resource is read or changed;
3. walk the catalog order: check each resource (read-only), apply the
   planned change unless this is a dry run, then refresh it when a resource
   that notifies it changed. A resource that fails makes everything that
   requires it (or is notified by it) ``skipped``; the rest goes on.

The engine is synchronous and single-threaded on purpose: resources are
ordered, and a no-op converge of a thousand files is a few thousand system
calls, which is faster than any thread pool would make it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from grapevine.gossip.errors import ConfigError, GrapevineError, PolicyError, Reason

from . import selectors
from .catalog import Catalog, build_catalog
from .report import Report, ResourceReport
from .resources import Change, Context, Converged, ResourceError, entry_type, finish

log = logging.getLogger("grapevine.policy")

__all__ = ["converge", "plan", "select_bundles", "root_lock", "ConvergeBusy"]

# How long a converge waits for another one on the same root to finish. A
# no-op converge takes well under a second; a package install may take
# minutes, after which the waiting run gives up rather than queue forever.
LOCK_WAIT_S = 300.0
LOCK_POLL_S = 0.05


class ConvergeBusy(GrapevineError):
    """Another converge holds the root for longer than we were willing to wait."""

    reason = Reason.BUSY


@contextlib.contextmanager
def root_lock(root: Path, *, exclusive: bool, wait_s: float) -> Iterator[None]:
    """flock the root directory itself: nothing is written into the tree."""
    import fcntl

    try:
        fd = os.open(str(root), os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise ConfigError(f"converge root {root} cannot be used: {exc.strerror}") from None
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ConvergeBusy(f"another converge is running on {root} (waited {wait_s:g}s)") from None
                time.sleep(LOCK_POLL_S)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def select_bundles(bundles: Sequence, facts: Mapping[str, Any]) -> tuple[list, list]:
    """Split bundles into (targeting this node, not targeting it)."""
    chosen, others = [], []
    for b in bundles:
        try:
            target = selectors.parse(b.target)
        except PolicyError as exc:
            raise PolicyError(f"bundle {b.name!r}: target: {exc}") from None
        (chosen if target.matches(facts) else others).append(b)
    return chosen, others


def _ids_of(bundles: Iterable) -> set[str]:
    """Resource ids declared by bundles (leniently: broken entries are ignored)."""
    out = set()
    for b in bundles:
        for raw in b.resources:
            try:
                rtype = entry_type(raw)
            except PolicyError:
                continue
            out.add(f"{rtype}:{raw[rtype]}")
    return out


def _open_secrets(bundles: Sequence, node_key: Any, refused: dict[str, tuple[str, str]] | None) -> dict[str, dict[str, str]]:
    """bundle name -> {secret name: plaintext} for the values sealed to this node.

    A value that cannot be opened is a PolicyError, or with ``refused`` given,
    refuses that bundle alone.
    """
    if node_key is None or not any(getattr(b, "secrets", None) for b in bundles):
        return {}
    from grapevine.gossip.errors import TrustError

    from .secrets import secrets_for

    out = {}
    for b in bundles:
        try:
            opened = secrets_for(b, node_key)
            out[b.name] = {k: v.text() for k, v in opened.items()}
        except (TrustError, UnicodeDecodeError) as exc:
            error = f"bundle {b.name!r}: secrets: {exc}"
            if refused is None:
                raise PolicyError(error) from None
            refused[b.name] = ("", error)
    return out


def plan(
    bundles: Sequence, *, root: Path, facts: Mapping[str, Any], node_key: Any = None, isolate_bundles: bool = False
) -> tuple[Catalog, list[str], Context]:
    """Validate and prepare: the catalog, the selected ids in order, the context.

    Raises PolicyError (naming bundle, resource and reason) for anything
    wrong with the policy; touches nothing on disk. With ``isolate_bundles``
    a bundle that cannot be prepared on this node (a template error, a
    secret not sealed to it) is recorded in ``ctx.refused`` instead: it is
    not applied, and the other bundles are.
    """
    chosen, others = select_bundles(bundles, facts)
    catalog = build_catalog(chosen, known_elsewhere=_ids_of(others))
    refused: dict[str, tuple[str, str]] = {}
    ctx = Context(
        root=Path(root), facts=facts, secrets=_open_secrets(chosen, node_key, refused if isolate_bundles else None),
        node_key_id=getattr(node_key, "key_id", "") if node_key is not None else "", refused=refused,
    )
    selected: list[str] = []
    for rid in catalog.order:
        entry = catalog.entries[rid]
        if not entry.when.matches(facts):
            log.debug("[%s] %s not selected on this node (when: %s)", facts.get("name", ""), rid, entry.when.text)
            continue
        selected.append(rid)
        if entry.bundle in refused:
            continue
        try:
            entry.resource.prepare(ctx)
        except PolicyError as exc:
            error = ctx.scrub(f"bundle {entry.bundle!r}: resource {rid}: {exc}")
            if not isolate_bundles:
                raise PolicyError(error) from None
            refused[entry.bundle] = (rid, error)
            log.error("[%s] bundle %s is not applied: %s", facts.get("name", ""), entry.bundle, error)
    return catalog, selected, ctx


def converge(
    bundles: Sequence,
    *,
    root: Path | str,
    facts: Mapping[str, Any],
    dry_run: bool = False,
    node_key: Any = None,
    lock_wait_s: float = LOCK_WAIT_S,
    isolate_bundles: bool = False,
) -> Report:
    """Converge this node to ``bundles``; returns the report (never raises for a
    resource that fails, only PolicyError for a broken policy).

    ``node_key`` (a ``keys.SigningKey``) opens the secrets sealed to this
    node so templates can use them; without it ``secrets`` is empty. No
    opened value appears in the report: a file rendered from a secret shows
    no diff, and every text field is scrubbed of the values.

    ``isolate_bundles`` (the daemon): a bundle that cannot be prepared on
    this node fails alone (its resources are reported failed or skipped)
    instead of stopping the converge; one bad bundle must not hold back
    every other bundle on the node.

    Two converges never apply to the same root at once (the daemon's timer
    and an operator's ``converge --local``): applying holds an exclusive
    ``flock`` on the root directory, a dry run a shared one. Waiting longer
    than ``lock_wait_s`` raises ``ConvergeBusy``.
    """
    started_ms = int(time.time() * 1000)
    t_start = time.perf_counter()
    root = Path(root)
    catalog, selected, ctx = plan(bundles, root=root, facts=facts, node_key=node_key, isolate_bundles=isolate_bundles)
    ctx.dry_run = dry_run
    node = str(facts.get("name", ""))
    with root_lock(root, exclusive=not dry_run, wait_s=lock_wait_s):
        try:
            results = _walk(catalog, selected, ctx, dry_run=dry_run, node=node)
        finally:
            finish(ctx)
    chosen = sorted(b.name for b in select_bundles(bundles, facts)[0])
    if ctx.secret_values():
        results = [_scrubbed(r, ctx) for r in results]
    return Report(
        resources=tuple(results),
        dry_run=dry_run,
        node=node,
        root=str(root),
        bundles=tuple(chosen),
        started_ms=started_ms,
        duration_ms=(time.perf_counter() - t_start) * 1000,
    )


def _walk(catalog: Catalog, selected: list[str], ctx: Context, *, dry_run: bool, node: str) -> list[ResourceReport]:
    """Check (and unless dry_run apply, then refresh) each selected resource in order."""
    results: list[ResourceReport] = []
    status: dict[str, str] = {}
    applied: dict[str, Change] = {}
    selected_set = set(selected)
    waits_for: dict[str, list[str]] = {}
    for rid, nexts in catalog.dependents.items():
        for n in nexts:
            waits_for.setdefault(n, []).append(rid)
    for rid in selected:
        entry = catalog.entries[rid]
        res = entry.resource
        t0 = time.perf_counter()
        if entry.bundle in ctx.refused:
            cause, error = ctx.refused[entry.bundle]
            if cause in (rid, "") and not any(r.bundle == entry.bundle and r.status == "failed" for r in results):
                status[rid] = "failed"
                results.append(ResourceReport(id=rid, bundle=entry.bundle, status="failed", error=error))
            else:
                status[rid] = "skipped"
                results.append(ResourceReport(id=rid, bundle=entry.bundle, status="skipped",
                                              reason=f"bundle {entry.bundle} is not applied on this node ({error})"))
            continue
        blocked = [d for d in waits_for.get(rid, ()) if status.get(d) in ("failed", "skipped")]
        if blocked:
            why = ", ".join(f"{d} ({status[d]})" for d in blocked)
            status[rid] = "skipped"
            results.append(ResourceReport(id=rid, bundle=entry.bundle, status="skipped", reason=f"depends on {why}"))
            log.warning("[%s] %s skipped: depends on %s", node, rid, why)
            continue
        changes: list[str] = []
        diffs: list[str] = []
        outputs: list[str] = []
        reason = ""
        try:
            outcome = res.check(ctx)
            change = None
            if isinstance(outcome, Converged):
                reason = outcome.reason
            else:
                change = outcome
                changes.extend(change.summary)
                diffs.append(change.diff)
                if not dry_run:
                    out = res.apply(ctx, change)
                    if res.TYPE != "file":  # a link, a removed tree, a command: paths may resolve anew
                        ctx.forget_paths()
                    if out:
                        outputs.append(out)
                applied[rid] = change
            notifiers = [n for n in catalog.notified_by.get(rid, ()) if n in applied and n in selected_set]
            if notifiers and res.REFRESHABLE:
                refresh = res.refresh(ctx, just_changed=change)
                if refresh is not None:
                    changes.extend(f"{s} (notified by {', '.join(notifiers)})" for s in refresh.summary)
                    diffs.append(refresh.diff)
                    if not dry_run:
                        out = res.apply_refresh(ctx, refresh)
                        ctx.forget_paths()
                        if out:
                            outputs.append(out)
                    applied.setdefault(rid, refresh)
                elif change is None:
                    reason += f"; notified by {', '.join(notifiers)}, nothing to refresh"
        except (ResourceError, OSError, PolicyError) as exc:
            error = str(exc) if not isinstance(exc, OSError) else f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
            pending = [d for d in waits_for.get(rid, ()) if d in applied] if dry_run else []
            if pending:
                # A dry run did not make the change this resource depends on
                # (the user that should own the file, ...): not a failure.
                status[rid] = "skipped"
                why = f"cannot be checked before the planned change to {', '.join(pending)} ({error})"
                results.append(ResourceReport(id=rid, bundle=entry.bundle, status="skipped", reason=why))
                continue
            status[rid] = "failed"
            results.append(_failed(rid, entry.bundle, error, changes, diffs, t0))
            log.error("[%s] %s failed: %s", node, rid, error)
            continue
        except Exception as exc:  # a provider bug must not stop the converge
            status[rid] = "failed"
            log.exception("[%s] %s failed unexpectedly", node, rid)
            results.append(_failed(rid, entry.bundle, f"{type(exc).__name__}: {exc}", changes, diffs, t0))
            continue
        st = "changed" if changes else "unchanged"
        status[rid] = st
        if st == "changed":
            log.info("[%s] %s %s: %s", node, rid, "would change" if dry_run else "changed", "; ".join(changes))
        results.append(
            ResourceReport(
                id=rid,
                bundle=entry.bundle,
                status=st,
                changes=tuple(changes),
                diff="".join(diffs),
                reason=reason if st == "unchanged" else "",
                output="\n".join(outputs),
                duration_ms=(time.perf_counter() - t0) * 1000,
            )
        )
    return results


def _scrubbed(r: ResourceReport, ctx: Context) -> ResourceReport:
    """The report of one resource with every opened secret value replaced (belt and braces)."""
    import dataclasses

    return dataclasses.replace(
        r,
        changes=tuple(ctx.scrub(c) for c in r.changes),
        diff=ctx.scrub(r.diff), error=ctx.scrub(r.error), reason=ctx.scrub(r.reason), output=ctx.scrub(r.output),
    )


def _failed(rid: str, bundle: str, error: str, changes: list[str], diffs: list[str], t0: float) -> ResourceReport:
    return ResourceReport(
        id=rid,
        bundle=bundle,
        status="failed",
        changes=tuple(changes),
        diff="".join(diffs),
        error=error,
        duration_ms=(time.perf_counter() - t0) * 1000,
    )
