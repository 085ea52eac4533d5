// The ops page: polls the service's JSON endpoints every 2 s and renders them. No framework,
// no build step; every text goes through textContent (error texts come from outside).
"use strict";

const POLL_MS = 2000;
const SPARK_POINTS = 60;
const TOKEN_KEY = "infragpt.adminToken";

const state = { handledTotal: null, handledAt: null, rates: [], needToken: false, actionNote: "" };

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else if (k === "onclick") node.addEventListener("click", v);
    // CSSOM, not the style attribute: the page's CSP allows no inline style attributes.
    else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

// One call to the service: the admin token goes along when the tab has one.
async function api(path, options) {
  const headers = { Accept: "application/json" };
  const t = token();
  if (t) headers.Authorization = "Bearer " + t;
  const res = await fetch(path, Object.assign({ headers, cache: "no-store" }, options || {}));
  const text = await res.text();
  let body = text;
  if ((res.headers.get("content-type") || "").includes("json") && text) {
    try { body = JSON.parse(text); } catch (_) { body = text; }
  }
  return { status: res.status, body };
}

function askToken(why) {
  state.needToken = true;
  $("token-form").hidden = false;
  $("token-why").textContent = why;
}

function errorText(r) {
  if (r.body && r.body.error) return r.body.error.code + ": " + r.body.error.message;
  return "HTTP " + r.status;
}

// Prometheus text format: name{labels} value, summed per name and per label set.
function parseMetrics(text) {
  const out = [];
  for (const line of String(text).split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || "").slice(1, -1).matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

const sum = (metrics, name, filter) => metrics
  .filter((s) => s.name === name && (!filter || filter(s.labels)))
  .reduce((a, s) => a + s.value, 0);

function badge(text, cls) { return el("span", { class: "badge " + (cls || "state-" + text) }, text); }

function renderKinds(tree) {
  const body = $("kinds").tBodies[0];
  body.replaceChildren();
  for (const [kind, byState] of Object.entries(tree.counts || {})) {
    const live = Object.entries(byState)
      .filter(([s]) => s !== "stopped" && s !== "failed")
      .reduce((a, [, n]) => a + n, 0);
    const states = el("span", {}, ...Object.entries(byState).map(([s, n]) => badge(s + " " + n, "state-" + s)));
    body.append(el("tr", { "data-kind": kind, "data-live": live }, el("td", {}, kind), el("td", { class: "live" }, live), el("td", { class: "opt" }, states)));
  }
  $("total").textContent = "(" + tree.total + " actors)";
}

function renderNode(node) {
  const children = (node.children || []).map(renderNode);
  if (node.children_omitted) children.push(el("li", { class: "muted" }, "… " + node.children_omitted + " more"));
  const line = el("div", { class: "node" },
    badge(node.state),
    el("span", { class: "id" }, node.kind + "/" + node.key),
    el("span", { class: "muted" }, "restarts " + node.restarts),
    el("span", { class: "muted" }, "backlog " + node.backlog),
    el("span", { class: "muted" }, "handled " + node.messages_handled),
    node.last_error ? el("span", { class: "err" }, node.last_error) : null);
  return el("li", { "data-kind": node.kind, "data-key": node.key, "data-state": node.state },
    line, children.length ? el("ul", {}, ...children) : null);
}

function collect(nodes, kind, out) {
  for (const n of nodes || []) {
    if (n.kind === kind) out.push(n);
    collect(n.children, kind, out);
  }
  return out;
}

function renderSlack(tree) {
  const body = $("slack").tBodies[0];
  body.replaceChildren();
  const conns = collect(tree.roots, "slack_connection", []);
  if (!conns.length) body.append(el("tr", {}, el("td", { colspan: 3, class: "muted" }, "no Socket Mode connection")));
  for (const c of conns) {
    // The connection's own facts (state, since when, envelopes, reconnects), one per line.
    const facts = c.detail && typeof c.detail === "object"
      ? Object.entries(c.detail).filter(([, v]) => v !== null && typeof v !== "object").map(([k, v]) => el("div", {}, k + ": " + v))
      : [];
    if (c.last_error) facts.push(el("div", { class: "err" }, c.last_error));
    body.append(el("tr", { "data-key": c.key, "data-state": c.state },
      el("td", { class: "nowrap" }, c.key), el("td", { class: "nowrap" }, badge(c.state)),
      el("td", { class: "opt detail" }, ...facts)));
  }
}

function renderRates(metrics) {
  const now = Date.now();
  const total = sum(metrics, "infragpt_actor_messages_handled_total");
  if (state.handledTotal !== null && now > state.handledAt) {
    const rate = Math.max(0, (total - state.handledTotal) / ((now - state.handledAt) / 1000));
    state.rates.push(rate);
    if (state.rates.length > SPARK_POINTS) state.rates.shift();
    $("rate").textContent = rate.toFixed(1);
  }
  state.handledTotal = total;
  state.handledAt = now;
  const max = Math.max(1, ...state.rates);
  const step = 300 / (SPARK_POINTS - 1);
  const offset = SPARK_POINTS - state.rates.length;
  $("spark").querySelector("polyline").setAttribute("points",
    state.rates.map((r, i) => ((i + offset) * step).toFixed(1) + "," + (38 - (r / max) * 36).toFixed(1)).join(" "));
  $("backlog").textContent = sum(metrics, "infragpt_inbox_backlog");
}

async function act(method, id, verb) {
  const r = await api("/admin/events/" + encodeURIComponent(id) + (verb === "retry" ? "/retry" : ""), { method });
  state.actionNote = r.status < 300 ? "event " + id + ": " + (verb === "retry" ? "requeued" : "discarded") : "event " + id + ": " + errorText(r);
  await poll();
}

function renderDead(r) {
  const body = $("dead").tBodies[0];
  body.replaceChildren();
  if (r.status === 401) {
    $("dead-note").textContent = "Dead letters need the admin token.";
    $("dead-count").textContent = "–";
    askToken("Dead letters and their retry need the admin token.");
    return;
  }
  if (r.status !== 200) { $("dead-note").textContent = errorText(r); return; }
  // The outcome of the last retry or discard, if any.
  $("dead-note").textContent = state.actionNote;
  $("dead-count").textContent = r.body.events.length + (r.body.events.length >= r.body.limit ? "+" : "");
  if (!r.body.events.length) body.append(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "none")));
  for (const e of r.body.events) {
    body.append(el("tr", { "data-id": e.id },
      el("td", { class: "nowrap" }, e.id), el("td", {}, e.source + " " + e.kind), el("td", { class: "opt" }, e.routing_key),
      el("td", {}, e.attempts), el("td", {}, e.last_error || ""),
      el("td", { class: "nowrap" },
        el("button", { type: "button", class: "retry", onclick: () => act("POST", e.id, "retry") }, "Retry"), " ",
        el("button", { type: "button", class: "discard danger", onclick: () => { if (confirm("Discard event " + e.id + "?")) act("DELETE", e.id, "discard"); } }, "Discard"))));
  }
}

const PALETTE = ["#2b59c3", "#12805c", "#b54708", "#7a5af8", "#c01048", "#0e7090", "#4e5ba6", "#a15c07"];

function renderCluster(r, tree) {
  const rows = $("replicas").tBodies[0];
  rows.replaceChildren();
  const grid = $("partitions");
  grid.replaceChildren();
  const me = tree && tree.cluster ? tree.cluster.replica : null;
  $("replica").textContent = me ? "replica " + me : "";
  if (r.status !== 200) { rows.append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, errorText(r)))); return; }
  const view = r.body.view;
  const color = {};
  view.replicas.forEach((rep, i) => { color[rep.id] = PALETTE[i % PALETTE.length]; });
  for (const rep of view.replicas) {
    rows.append(el("tr", { "data-replica": rep.id },
      el("td", {}, el("span", { class: "badge", style: "background:" + color[rep.id] + ";color:#fff" }, rep.id === me ? rep.id + " (this)" : rep.id)),
      el("td", { class: "opt" }, rep.host + " pid " + rep.pid),
      el("td", {}, badge(rep.live ? rep.status : "down", rep.live ? "state-running" : "state-failed")),
      el("td", {}, new Date(rep.heartbeat_at).toLocaleTimeString()),
      el("td", {}, rep.partitions.length)));
  }
  for (const p of view.partitions) {
    grid.append(el("span", { title: "partition " + p.partition + (p.owner ? " · " + p.owner : " · free") + " · backlog " + p.backlog,
      style: "background:" + (p.owner ? color[p.owner] || "#98a2b3" : "#d0d5dd") }, p.backlog ? p.backlog : p.partition));
  }
}

function renderReady(r) {
  const b = $("ready");
  const s = r.body && r.body.status ? r.body.status : (r.status === 200 ? "ready" : "not ready");
  b.textContent = s;
  b.className = "badge " + (r.status === 200 ? (JSON.stringify(r.body).includes("degraded") ? "degraded" : "ready") : "not-ready");
}

let polling = false;
async function poll() {
  if (polling) return;
  polling = true;
  try {
    const [ready, actors, metrics, cluster] = await Promise.all([api("/readyz"), api("/actors"), api("/metrics"), api("/cluster")]);
    renderReady(ready);
    if (actors.status === 401) {
      askToken("This listener needs the admin token for the actor tree and metrics.");
      $("error").hidden = true;
    } else if (actors.status !== 200) {
      $("error").textContent = "/actors: " + errorText(actors);
      $("error").hidden = false;
    } else {
      $("error").hidden = true;
      renderKinds(actors.body);
      renderSlack(actors.body);
      $("tree").replaceChildren(...actors.body.roots.map(renderNode));
    }
    if (metrics.status === 200) renderRates(parseMetrics(metrics.body));
    renderCluster(cluster, actors.status === 200 ? actors.body : null);
    renderDead(token() ? await api("/admin/events?limit=100") : { status: 401, body: null });
    if (!state.needToken || token()) $("token-form").hidden = !state.needToken || !!token();
    $("token-forget").hidden = !token();
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  } catch (e) {
    $("error").textContent = "cannot reach the service: " + e;
    $("error").hidden = false;
  } finally {
    polling = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    $("token-input").value = "";
    $("token-form").hidden = true;
    state.needToken = false;
    poll();
  });
  $("token-forget").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); poll(); });
  poll();
  setInterval(poll, POLL_MS);
});
