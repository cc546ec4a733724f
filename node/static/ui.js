// The fleet page: fetches /api/fleet (the same fleet status query as `grapevine status --fleet`)
// every few seconds and renders it. Text is always set with textContent, never parsed as HTML.
"use strict";

const params = new URLSearchParams(location.search);
const REFRESH_MS = Math.max(1000, Number(params.get("refresh") || 5) * 1000);
let refreshes = 0;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.appendChild(c); else td.textContent = c === null || c === undefined ? "" : String(c);
    tr.appendChild(td);
  }
  return tr;
}

function table(headers, rows) {
  const t = document.createElement("table");
  const head = document.createElement("tr");
  for (const h of headers) head.appendChild(el("th", h));
  const thead = document.createElement("thead");
  thead.appendChild(head);
  t.appendChild(thead);
  const body = document.createElement("tbody");
  for (const r of rows) body.appendChild(row(r));
  t.appendChild(body);
  return t;
}

function ago(ms, now) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 90) return s + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

function when(ms) {
  return ms ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC") : "";
}

function shortVersion(v) {
  if (!v) return "";
  const parts = String(v).split(".");
  return parts.length >= 3 ? when(Number(parts[0])) + " #" + parts[1] + " by " + parts.slice(2).join(".").slice(0, 8) : String(v);
}

function versionCell(v) {
  const span = el("span", v, "mono");
  span.title = shortVersion(v);
  return span;
}

function replace(id, ...children) {
  const node = document.getElementById(id);
  node.replaceChildren(...children);
  return node;
}

function render(doc) {
  const now = doc.generated_ms;
  const fleet = doc.fleet;
  const err = document.getElementById("error");
  err.hidden = !doc.error;
  err.textContent = doc.error ? "fleet query failed: " + doc.error + (fleet ? " (showing the last answer)" : "") : "";
  document.getElementById("origin").textContent = (doc.local && doc.local.node) || "this agent";
  refreshes += 1;
  const upd = document.getElementById("updated");
  upd.textContent = "updated " + when(now) + " · refreshes every " + REFRESH_MS / 1000 + " s";
  upd.dataset.refreshes = String(refreshes);
  if (!fleet) return;

  const problems = {};
  for (const d of fleet.not_converged || []) problems[d.node] = d.problems;
  replace("summary", el("span", fleet.nodes + " node(s) answered in " + fleet.discovery_ms + " ms: "),
          el("span", fleet.converged + " converged", "ok"), el("span", ", "),
          el("span", (fleet.not_converged || []).length + " not converged",
             (fleet.not_converged || []).length ? "bad" : "muted"));

  // members
  const members = fleet.members || {};
  const names = Object.keys(members).sort();
  const tbody = document.querySelector("#members tbody");
  tbody.replaceChildren();
  for (const n of names) {
    const info = members[n] || {};
    const p = problems[n] || [];
    const state = info.stale ? el("span", "stale", "bad") : p.length ? el("span", "drift", "warn") : el("span", "ok", "ok");
    const last = info.last_report || null;
    const result = last ? (last.error ? el("span", "error: " + last.error, "bad")
      : el("span", (last.changed || 0) + " changed, " + (last.failed || 0) + " failed", last.failed ? "bad" : ""))
      : el("span", "no converge yet", "muted");
    const tr = row([el("span", n, "mono"), state, info.active ?? "", ago(info.last_heard_ms, info.now_ms || now),
                    last ? ago(last.at_ms, info.now_ms || now) + " (" + (last.trigger || "?") + ")" : "", result]);
    tr.dataset.node = n;
    tbody.appendChild(tr);
  }

  // bundles: newest version, and per node what it holds and applied, and when
  const bundles = fleet.bundles || {};
  const blocks = [];
  const bnames = Object.keys(bundles).sort();
  if (!bnames.length) blocks.push(el("p", "no bundles in the fleet yet", "muted"));
  for (const b of bnames) {
    const info = bundles[b];
    const h = el("h3");
    h.append(el("span", b, "mono"), el("span", " newest "), versionCell(info.version),
             el("span", " · applied on " + info.applied + "/" + info.targeted + " targeted node(s)",
                info.applied === info.targeted ? "ok" : "warn"));
    const rows = [];
    for (const n of names) {
      const held = ((members[n] || {}).bundles || []).find((x) => x.name === b);
      if (!held) { rows.push([el("span", n, "mono"), el("span", "does not hold it", "warn"), "", "", ""]); continue; }
      let st;
      if (!held.targeted) st = el("span", "not targeted", "muted");
      else if (held.applied && held.version === info.version) st = el("span", "applied", "ok");
      else if (held.version !== info.version) st = el("span", "behind", "bad");
      else st = el("span", "pending", "warn");
      rows.push([el("span", n, "mono"), st, versionCell(held.version),
                 held.applied_version ? versionCell(held.applied_version) : "", when(held.applied_ms)]);
    }
    const t = table(["node", "state", "holds", "applied version", "applied at"], rows);
    t.dataset.bundle = b;
    blocks.push(h, t);
  }
  replace("bundles", ...blocks);

  // drift and staleness
  const items = [];
  for (const d of fleet.not_converged || []) {
    for (const p of d.problems) items.push(el("li", d.node + ": " + p));
  }
  if (!items.length) items.push(el("li", "none: every answering node holds and applied the newest version of what targets it", "ok"));
  replace("drift", ...items);

  // recent runs: the run audit trail when the fleet status carries it; else each node's last converge
  const runs = [];
  for (const n of names) for (const r of (members[n] || {}).runs || []) runs.push(Object.assign({ node: n }, r));
  for (const r of fleet.runs || []) runs.push(r);
  const runBlocks = [];
  if (runs.length) {
    runs.sort((a, b) => (b.started_ms || 0) - (a.started_ms || 0));
    runBlocks.push(table(["when", "node", "operator", "command", "selector", "exit", "refused"],
      runs.slice(0, 50).map((r) => [when(r.started_ms), r.node || r.origin || "", r.operator || "",
        Array.isArray(r.command) ? r.command.join(" ") : (r.command || ""), r.selector || "",
        r.exit_code ?? "", r.refused || ""])));
  } else {
    runBlocks.push(el("p", "This fleet status carries no run audit trail; the last converge of each node:", "muted"));
    runBlocks.push(table(["node", "when", "trigger", "changed", "failed", "error"],
      names.filter((n) => (members[n] || {}).last_report).map((n) => {
        const r = members[n].last_report;
        return [el("span", n, "mono"), when(r.at_ms), r.trigger || "", r.changed ?? "", r.failed ?? "", r.error || ""];
      })));
  }
  replace("runs", ...runBlocks);

  // rollouts
  const rollouts = Array.isArray(fleet.rollouts) ? fleet.rollouts : Object.values(fleet.rollouts || {});
  if (rollouts.length) {
    replace("rollouts", table(["bundle", "version", "state", "stages", "reason"],
      rollouts.map((r) => [r.bundle || "", versionCell(r.version || ""), r.state || "",
        (r.stages || []).map((s) => (s.open ? "●" : "○") + " " + s.fraction + " (" + (s.applied ?? 0) + " applied, "
          + (s.failed ?? 0) + " failed)").join("  "), r.reason || ""])));
  } else {
    replace("rollouts", el("p", "No staged rollouts in this fleet status.", "muted"));
  }
}

async function refresh() {
  try {
    const resp = await fetch("/api/fleet", { cache: "no-store" });
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    render(await resp.json());
  } catch (e) {
    const err = document.getElementById("error");
    err.hidden = false;
    err.textContent = "cannot reach the agent: " + e.message + " (showing the last answer)";
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
