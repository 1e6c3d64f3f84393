// raftgate status page: polls this member's admin API once a second and renders it.
// Everything from the API is written with textContent, never as HTML.
"use strict";

const REFRESH_MS = 1000;
const MAX_EVENTS = 200;
let lastSeq = 0;
let events = [];
let lastOk = 0;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function badge(text, cls) {
  return el("span", { class: "badge " + (cls || String(text).toLowerCase()) }, text);
}

function table(headers, rows) {
  const t = el("table");
  t.append(el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", {}, h)))));
  const body = el("tbody");
  rows.forEach((r) => body.append(r));
  t.append(body);
  return t;
}

function empty(text) {
  return el("div", { class: "empty" }, text);
}

function put(id, node) {
  const box = document.getElementById(id);
  box.replaceChildren(node);
}

function text(id, value) {
  document.getElementById(id).textContent = value === null || value === undefined ? "–" : String(value);
}

async function get(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (r.status === 404) return null;
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}

function ago(ms) {
  if (ms === null || ms === undefined) return "";
  if (ms < 1000) return ms + " ms ago";
  const s = Math.round(ms / 1000);
  if (s < 120) return s + " s ago";
  return Math.round(s / 60) + " min ago";
}

function owners(vips) {
  const held = {};
  for (const v of (vips && vips.vips) || []) {
    const s = v.state || {};
    if (s.state === "owned") (held[s.owner] = held[s.owner] || []).push(v.vip);
  }
  return held;
}

function renderMembers(status, cluster, vips) {
  const raft = status.raft && status.raft.member;
  if (!cluster || !raft) {
    put("members", table(["node", "role", "config version", "ready"], [
      el("tr", { "data-id": status.node_id, "data-role": "single", "data-reachable": "yes" },
        el("td", {}, status.node_id), el("td", {}, badge("single node", "ok")),
        el("td", { class: "num" }, status.config_version), el("td", {}, status.ready ? "yes" : "no")),
    ]));
    text("quorum", "no raft section: this node runs alone");
    return;
  }
  const held = owners(vips);
  const versions = cluster.members.filter((m) => m.status).map((m) => m.status.config_version);
  const newest = versions.length ? Math.max(...versions) : 0;
  const rows = cluster.members.map((m) => {
    const s = m.status;
    const up = !!s;
    const role = up ? s.role : "unreachable";
    const version = up ? s.config_version : null;
    const vcell = el("td", { class: "num" + (up && version < newest ? " stale" : "") }, version === null ? "–" : version);
    return el("tr", { class: up ? "" : "down", "data-id": m.id, "data-role": role, "data-reachable": up ? "yes" : "no" },
      el("td", { class: "num" }, m.id, m.id === raft.id ? " (this)" : ""),
      el("td", { class: "mono" }, (m.member && m.member.addr) || ""),
      el("td", {}, badge(role, up ? role : "down"), m.voter ? "" : " learner"),
      el("td", { class: "num" }, up ? s.term : "–"),
      el("td", { class: "num" }, up ? (s.last_applied_index ?? "–") : "–"),
      vcell,
      el("td", {}, up ? (s.quorum_contact ? badge("yes", "ok") : badge("no", "bad")) : ""),
      el("td", { class: "mono" }, (held[m.id] || []).join(", ")),
      el("td", {}, up ? "" : (m.error || "no answer")));
  });
  put("members", table(["id", "address", "role", "term", "applied", "config", "quorum", "VIPs", ""], rows));
  const upCount = cluster.members.filter((m) => m.status).length;
  const voters = cluster.members.filter((m) => m.voter).length;
  text("quorum", upCount + " of " + cluster.members.length + " answering, " + voters + " voters, quorum " + (Math.floor(voters / 2) + 1));
}

function renderVips(vips) {
  if (!vips) {
    put("vips", empty("No floating IPs on this member (no vip section in its config)."));
    text("viprev", "");
    return;
  }
  text("viprev", "table revision " + vips.revision + (vips.refused ? " · this member refuses VIPs: " + vips.refused : ""));
  if (!vips.vips.length) {
    put("vips", empty("The pool is empty."));
    return;
  }
  const rows = vips.vips.map((v) => {
    const s = v.state || {};
    let where;
    if (s.state === "owned") where = el("span", {}, badge("owned", "owned"), " by member " + s.owner);
    else if (s.state === "releasing") where = el("span", {}, badge("handover", "releasing"), " " + s.from + " → " + (s.to ?? "nobody"));
    else where = badge("no owner", "unassigned");
    return el("tr", { "data-vip": v.vip, "data-owner": s.state === "owned" ? s.owner : "" },
      el("td", { class: "mono" }, v.vip), el("td", {}, where), el("td", {}, String(v.reason).replace(/_/g, " ")),
      el("td", {}, ago(v.moved_ms_ago)), el("td", {}, v.held ? v.held : ""));
  });
  put("vips", table(["address", "owner", "last move", "moved", "held here"], rows));
}

function renderRoutes(routes, status) {
  text("routecount", status.routes);
  const list = routes && (Array.isArray(routes) ? routes : routes.routes);
  if (!list) {
    put("routes", empty(status.routes + " routes on " + status.hosts + " hosts, " + status.upstreams + " upstreams."));
    return;
  }
  text("routesinfo", list.length + " routes");
  if (!list.length) {
    put("routes", empty("No routes yet."));
    return;
  }
  const cell = (v) => (v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v));
  const rows = list.slice(0, 500).map((r) =>
    el("tr", {}, el("td", { class: "mono" }, cell(r.host) || "*"), el("td", { class: "mono" }, cell(r.path)),
      el("td", {}, cell(r.match)), el("td", { class: "mono" }, cell(r.backend)), el("td", {}, cell(r.source))));
  put("routes", table(["host", "path", "match", "backend", "from"], rows));
}

function renderProblems(status) {
  const problems = status.problems || [];
  text("problemcount", problems.length ? problems.length + "" : "");
  if (!problems.length) {
    const leads = !status.raft || status.raft.source_running;
    put("problems", empty(leads ? "None: every object compiles." : "None known here: the leader compiles the config (open its page for rejections)."));
    return;
  }
  const rows = problems.map((p) =>
    el("tr", {}, el("td", {}, badge(p.severity, p.severity === "rejected" ? "rejected" : "warn")),
      el("td", { class: "mono" }, p.kind + " " + p.object), el("td", {}, p.reason)));
  put("problems", table(["", "object", "reason"], rows));
}

function renderEvents(fresh) {
  if (fresh.length) {
    events = events.concat(fresh).slice(-MAX_EVENTS);
    lastSeq = fresh[fresh.length - 1].seq;
  }
  if (!events.length) {
    put("events", empty("Nothing yet."));
    return;
  }
  const rows = events.slice().reverse().map((e) =>
    el("tr", { "data-kind": e.kind },
      el("td", {}, new Date(e.at_ms).toLocaleTimeString()), el("td", {}, badge(e.kind.replace(/_/g, " "), e.kind)), el("td", {}, e.message)));
  put("events", table(["time", "kind", "what"], rows));
}

async function refresh() {
  try {
    const status = await get("/api/v1/status");
    const [cluster, vips, routes, fresh] = await Promise.all([
      status.raft ? get("/api/v1/cluster").catch(() => null) : null,
      get("/api/v1/vips").catch(() => null),
      get("/api/v1/routes").catch(() => null),
      get("/api/v1/events?since=" + lastSeq).catch(() => []),
    ]);
    const raft = status.raft && status.raft.member;
    text("node", status.node_id);
    text("role", raft ? raft.role : "single node");
    text("leader", raft ? (raft.leader ?? "none") : "–");
    text("term", raft ? raft.term : "–");
    // In a group the config version counts every replicated batch (routing and VIP state), the
    // number the members compare; the routing table keeps the version of its last change.
    text("version", status.config_version);
    text("table", "v" + status.routing_version);
    renderMembers(status, cluster, vips);
    renderVips(vips);
    renderRoutes(routes, status);
    renderProblems(status);
    renderEvents((fresh && fresh.events) || []);
    lastOk = Date.now();
    const conn = document.getElementById("conn");
    conn.className = "";
    conn.textContent = "updated " + new Date(lastOk).toLocaleTimeString();
    document.body.dataset.updated = String(lastOk);
  } catch (e) {
    const conn = document.getElementById("conn");
    conn.className = "lost";
    conn.textContent = "this member does not answer (" + e.message + ")" + (lastOk ? "; last update " + new Date(lastOk).toLocaleTimeString() : "");
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
