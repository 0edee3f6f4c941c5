// The live dashboard (docs/operations.md, "Dashboard"). Every node publishes a snapshot
// of itself in the private channel $admin:live while a dashboard watches; this page
// subscribes with the browser client, keeps the latest snapshot of each node, and shows
// their sums. No build step: uPlot is loaded as a plain script (window.uPlot).
import { Client } from "/js/backchannel.js";

const $ = (id) => document.getElementById(id);
/** Points kept per chart: two minutes at one snapshot a second. */
const POINTS = 120;
/** A node not heard from for this many intervals is dropped from the view. */
const STALE_INTERVALS = 5;

let client = null;
let interval = 1000;
let renderTimer = null;
/** node name -> {snap, at} */
const nodes = new Map();
const charts = {};
const series = { time: [], publications: [], deliveries: [], fanout: [], connections: [] };
/** For tests and the curious: how many snapshots arrived. */
window.admin = { updates: 0, nodes, get client() { return client; } };

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = String(text); // data is never HTML
  return node;
}

async function api(path, options = {}) {
  const res = await fetch(path, { credentials: "same-origin", ...options });
  let body = null;
  try { body = await res.json(); } catch { /* not JSON */ }
  if (!res.ok) {
    const err = new Error(body?.error?.message || `HTTP ${res.status}`);
    err.status = res.status;
    throw err;
  }
  return body;
}

const post = (path, data) => api(path, {
  method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data),
});

function showLogin(message = "") {
  if (client) { client.close(); client = null; }
  clearInterval(renderTimer);
  $("dash").hidden = true; $("logout").hidden = true; $("login").hidden = false;
  $("login-error").textContent = message;
  setStatus("disconnected");
}

function setStatus(state) {
  $("status").dataset.state = state;
  $("status").textContent = state;
}

async function tokens(clientId) {
  try {
    return await api(`/admin/api/token${clientId ? `?client=${encodeURIComponent(clientId)}` : ""}`);
  } catch (err) {
    if (err.status === 401) showLogin("Your session ended: log in again.");
    throw err;
  }
}

function start(first) {
  interval = Math.max(100, (first.interval || 1) * 1000);
  $("login").hidden = true; $("dash").hidden = false; $("logout").hidden = false;
  makeCharts();
  let cached = first.token;
  const getToken = async () => {
    if (cached) { const t = cached; cached = null; return t; }
    return (await tokens()).token;
  };
  const wsUrl = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`;
  client = new Client(wsUrl, { getToken, name: "dashboard" });
  client.on("state", (state) => setStatus(state));
  client.on("error", (err) => console.warn("backchannel:", err.code, err.message));
  client.subscribe(first.channel, {
    getToken: async ({ client: id }) => (await tokens(id)).channel_token,
    onPublication: (pub) => receive(pub.data),
  });
  client.connect().catch((err) => setStatus(`not connected: ${err.message}`));
  clearInterval(renderTimer);
  renderTimer = setInterval(tick, interval);
}

function receive(snap) {
  if (!snap || typeof snap.node !== "string") return;
  nodes.set(snap.node, { snap, at: Date.now() });
  window.admin.updates += 1;
  render();
}

function totals() {
  const t = { nodes: 0, connections: 0, users: 0, channels: 0, publications: 0, deliveries: 0,
              p99: null, slow: 0, alerts: 0 };
  for (const { snap } of nodes.values()) {
    t.nodes += 1;
    t.connections += snap.stats.sessions;
    t.users += snap.stats.users;
    t.channels += snap.stats.channels;
    t.publications += snap.rates.publications;
    t.deliveries += snap.rates.deliveries;
    t.slow += snap.stats.slow_consumers;
    t.alerts += snap.alerts.active.length;
    // The cluster's p99 is at most the worst node's: an upper estimate, as each node's is.
    if (snap.fanout_ms.p99 !== null) t.p99 = Math.max(t.p99 ?? 0, snap.fanout_ms.p99);
  }
  return t;
}

const fmt = (n) => (n === null || n === undefined ? "–"
  : typeof n !== "number" || Number.isInteger(n) ? String(n) : n.toFixed(1));

// One chart point per interval, whatever the number of nodes.
function tick() {
  const now = Date.now();
  for (const [name, { at }] of nodes) if (now - at > STALE_INTERVALS * interval) nodes.delete(name);
  const t = totals();
  series.time.push(now / 1000);
  series.publications.push(t.publications);
  series.deliveries.push(t.deliveries);
  series.fanout.push(t.p99);
  series.connections.push(t.connections);
  for (const key of Object.keys(series)) if (series[key].length > POINTS) series[key].shift();
  for (const [key, chart] of Object.entries(charts)) chart.setData([series.time, series[key]]);
  render();
}

function render() {
  const t = totals();
  for (const key of ["nodes", "connections", "users", "channels", "publications", "deliveries", "alerts"]) {
    $(`total-${key}`).textContent = fmt(t[key]);
  }
  $("total-p99").textContent = fmt(t.p99);
  const foot = $("nodes-total");
  for (const key of ["connections", "users", "channels", "publications", "deliveries", "p99", "slow"]) {
    foot.querySelector(`[data-key="${key}"]`).textContent = fmt(t[key]);
  }
  renderNodes();
  renderChannels();
  renderLists();
}

function renderNodes() {
  const body = $("nodes").tBodies[0];
  body.replaceChildren();
  for (const [name, { snap }] of [...nodes].sort(([a], [b]) => a.localeCompare(b))) {
    const row = el("tr");
    row.dataset.node = name;
    const cells = [name, snap.broker, snap.stats.sessions, snap.stats.users, snap.stats.channels,
                   snap.rates.publications, snap.rates.deliveries, snap.fanout_ms.p50, snap.fanout_ms.p99,
                   snap.stats.slow_consumers];
    for (const value of cells) row.append(el("td", "", fmt(value)));
    body.append(row);
  }
}

function renderChannels() {
  const counts = new Map();
  for (const { snap } of nodes.values()) {
    for (const [channel, n] of snap.channels) counts.set(channel, (counts.get(channel) || 0) + n);
  }
  const body = $("channels").tBodies[0];
  body.replaceChildren();
  const top = [...counts].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).slice(0, 10);
  for (const [channel, n] of top) {
    const row = el("tr");
    row.dataset.channel = channel;
    row.append(el("td", "", channel), el("td", "", n));
    body.append(row);
  }
}

const clock = (t) => new Date(t * 1000).toLocaleTimeString();

function fill(list, items, make) {
  const target = $(list);
  target.replaceChildren();
  if (items.length === 0) target.append(el("li", "empty", "none"));
  for (const item of items) target.append(make(item));
}

function renderLists() {
  const all = (key) => [...nodes.values()].flatMap(({ snap }) => snap[key].map((x) => ({ ...x, node: snap.node })));
  const byTime = (a, b) => b.time - a.time;
  const active = [...nodes.values()].flatMap(({ snap }) => snap.alerts.active.map((a) => ({ ...a, node: snap.node })));
  const events = [...nodes.values()].flatMap(({ snap }) => snap.alerts.events.map((a) => ({ ...a, node: snap.node })));
  fill("alerts", [...active.sort(byTime), ...events.filter((e) => e.state === "resolved").sort(byTime)], (a) => {
    const li = el("li", a.state, `${clock(a.time)} ${a.state} ${a.name}: ${a.message} (${fmt(a.value)} / ${fmt(a.threshold)}) · ${a.node}`);
    li.dataset.alert = a.name;
    return li;
  });
  fill("slow", all("slow_consumers").sort(byTime), (s) =>
    el("li", "", `${clock(s.time)} ${s.user || "(anonymous)"} ${s.channel ?? "(reply)"} · ${s.node}`));
  fill("errors", all("errors").sort(byTime), (e) =>
    el("li", e.level, `${clock(e.time)} ${e.level} ${e.logger}: ${e.message} · ${e.node}`));
}

function makeCharts() {
  const colors = { publications: "#2563eb", deliveries: "#7c3aed", fanout: "#dc2626", connections: "#059669" };
  for (const key of Object.keys(colors)) {
    if (charts[key]) continue;
    const target = $(`chart-${key}`);
    const width = Math.max(200, target.clientWidth - 16);
    charts[key] = new window.uPlot({
      title: target.dataset.title, width, height: 150,
      legend: { show: false },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.15)] } },
      series: [{}, { label: target.dataset.title, stroke: colors[key], width: 2, fill: `${colors[key]}22`,
                     spanGaps: true }],
    }, [[], []], target);
  }
}

async function action(name, data) {
  const out = $("result");
  out.dataset.action = name;
  try {
    const result = await post(`/admin/api/${name}`, data);
    let head = "";
    if (name === "presence" && result.clients) {
      const shown = Object.keys(result.clients).length;
      head = `${result.count} clients, ${result.users} users` +
        (result.next_cursor ? `; the first ${shown} shown (one page)` : "") + "\n";
    }
    out.textContent = head + JSON.stringify(result, null, 2);
    out.dataset.ok = "true";
  } catch (err) {
    if (err.status === 401) showLogin("Your session ended: log in again.");
    out.textContent = `${name}: ${err.message}`;
    out.dataset.ok = "false";
  }
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    start(await post("/admin/login", { password: $("password").value }));
    $("password").value = "";
  } catch (err) {
    $("login-error").textContent = err.message;
  }
});

$("logout").addEventListener("click", async () => {
  try { await post("/admin/logout", {}); } finally { showLogin(); }
});

$("lookup").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = event.submitter?.dataset.action === "history" ? "history" : "presence";
  action(name, name === "history" ? { channel: $("channel").value, limit: 20 } : { channel: $("channel").value });
});

$("publish").addEventListener("submit", (event) => {
  event.preventDefault();
  let data;
  try { data = JSON.parse($("publish-data").value); } catch { $("result").textContent = "publish: the data is not JSON"; return; }
  action("publish", { channel: $("publish-channel").value, data });
});

$("disconnect").addEventListener("submit", (event) => {
  event.preventDefault();
  action("disconnect", { user: $("user").value });
});

// Already logged in (a reload): the cookie gets tokens at once.
api("/admin/api/token").then(start, () => showLogin());
