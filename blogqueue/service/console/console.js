// The blogqueue operator console (DESIGN §12). No framework, no build step, no network but this origin.
//
// The admin token lives in sessionStorage (gone when the tab closes) and is sent only in the
// Authorization header: never in a URL, so it never reaches an access log or a Referer. The event
// stream is read with fetch() + a stream reader and parsed here, because EventSource cannot send
// headers. Everything from the server is written with textContent, never as HTML.
"use strict";

const KEY = "blogqueue.console.token";
const REFRESH_MS = 3000;          // the JSON figures; the event stream drives batch progress in between
const BATCH_REFRESH_MS = 400;     // at most one GET /v1/batches/{id} per batch this often
const MAX_EVENTS = 60;            // the event list on screen
const STATUSES = ["queued", "running", "retrying", "done", "failed", "cancelled"];
const FINISHED = ["done", "failed", "cancelled"];

const state = {
  token: null,
  batches: new Map(),    // batch_id -> {batch_id, tenant_id, total, counts, finished, created_at}
  pending: new Map(),    // batch_id -> timer of a scheduled batch refresh
  stream: null,          // AbortController of the event stream
  lastEventId: null,
  timer: null,
  armed: new Map(),      // action key -> timer: a destructive action needs a second click
  refreshFailed: false,  // the message on screen is a failed refresh's (cleared by the next success)
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = String(v);
    else if (k.startsWith("data-")) node.setAttribute(k, String(v));
    else if (k === "title") node.title = String(v);
    // Through the CSSOM: the Content-Security-Policy forbids style attributes.
    else if (k === "width") node.style.width = String(v);
    else node.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function message(text, kind) {
  const m = $("message");
  m.textContent = text || "";
  m.className = kind || "";
  m.hidden = !text;
}

function seconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function short(id) { return String(id).slice(0, 8); }

async function api(method, path) {
  const resp = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${state.token}`, Accept: "application/json" },
    cache: "no-store",
    credentials: "omit",
    referrerPolicy: "no-referrer",
  });
  let body = null;
  try { body = await resp.json(); } catch (_) { body = null; }
  if (!resp.ok) {
    const err = new Error((body && body.error && body.error.message) || `HTTP ${resp.status}`);
    err.status = resp.status;
    throw err;
  }
  return body;
}

// -- session --------------------------------------------------------------------------------------

async function connect(token) {
  state.token = token;
  try {
    const metrics = await api("GET", "/v1/metrics");
    sessionStorage.setItem(KEY, token);
    $("login").hidden = true;
    $("session").hidden = false;
    $("console").hidden = false;
    message("");
    render(metrics);
    startStream();
    state.timer = setInterval(refresh, REFRESH_MS);
  } catch (err) {
    state.token = null;
    sessionStorage.removeItem(KEY);
    const why = err.status === 401 ? "the token is not valid" :
      err.status === 403 ? "the console needs an admin token" : err.message;
    message(`Could not connect: ${why}.`, "error");
  }
}

function forget() {
  sessionStorage.removeItem(KEY);
  state.token = null;
  if (state.stream) state.stream.abort();
  state.stream = null;
  clearInterval(state.timer);
  for (const t of state.pending.values()) clearTimeout(t);
  state.pending.clear();
  state.batches.clear();
  incoming.length = 0;
  state.lastEventId = null;
  $("token").value = "";
  $("login").hidden = false;
  $("session").hidden = true;
  $("console").hidden = true;
}

async function refresh() {
  if (!state.token) return;
  try {
    render(await api("GET", "/v1/metrics"));
    if (state.refreshFailed) { state.refreshFailed = false; message(""); }
  } catch (err) {
    if (err.status === 401 || err.status === 403) { forget(); message("The token was refused; paste it again.", "error"); }
    else { state.refreshFailed = true; message(`Refresh failed: ${err.message}`, "error"); }
  }
}

// -- rendering ------------------------------------------------------------------------------------

function fill(tableId, rows, empty) {
  const body = $(tableId).tBodies[0];
  const cols = $(tableId).tHead.rows[0].cells.length;
  body.replaceChildren(...(rows.length ? rows : [el("tr", { class: "empty" }, el("td", { colspan: cols, text: empty }))]));
}

function render(m) {
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  const c = m.counts;
  const backlog = c.queued + c.running + c.retrying;
  const done5 = m.tenants.reduce((a, t) => a + t.done_5m, 0);
  const failed5 = m.tenants.reduce((a, t) => a + t.failed_5m, 0);
  const rate = done5 + failed5 ? (100 * failed5 / (done5 + failed5)).toFixed(1) + " %" : "–";
  $("summary").replaceChildren(
    card("Backlog", backlog, backlog > 5000 ? "crit" : backlog > 1000 ? "warn" : ""),
    card("Running", c.running),
    card("Done 5 min", done5),
    card("Failed 5 min", failed5),
    card("Error rate 5 min", rate, failed5 / Math.max(1, done5 + failed5) > 0.05 ? "warn" : ""),
    card("Dispatcher lag", seconds(m.dispatcher.lag_s)),
    card("Workers", m.workers.length),
    card("Leader", m.leader ? short(m.leader.worker_id) : "none", m.leader ? "" : "warn"),
    card("Redis", m.redis_reachable ? "up" : "unreachable", m.redis_reachable ? "" : "crit"),
  );
  renderTenants(m.tenants);
  renderBuckets(m.buckets);
  renderWorkers(m.workers, m.leader);
  renderFailures(m.recent_failures);
  for (const b of m.recent_batches) mergeBatch({ ...b, total: b.job_count });
  renderBatches();
}

function card(label, value, level) {
  return el("div", { class: `card ${level || ""}` }, el("div", { class: "label", text: label }),
    el("div", { class: "value", text: value }));
}

function renderTenants(tenants) {
  fill("tenants", tenants.map((t) => el("tr", { "data-tenant": t.tenant_id },
    el("td", { class: "id", text: t.tenant_id }),
    el("td", { class: "num", text: t.backlog }),
    el("td", { class: "num", text: t.in_flight }),
    el("td", { class: "num", text: t.done_5m }),
    el("td", { class: `num ${t.failed_5m ? "bad" : ""}`, text: t.failed_5m }),
    el("td", { class: "num", text: seconds(t.first_start_wait_s) }),
    el("td", { class: "num", text: seconds(t.oldest_waiting_s) }),
    el("td", {}, action("Stop tenant", "stop-tenant", `stop-tenant:${t.tenant_id}`, t.backlog === 0,
      () => act("POST", `/v1/stop?tenant=${encodeURIComponent(t.tenant_id)}`, `tenant ${t.tenant_id}`))),
  )), "no tenant has work now or in the last 5 minutes");
}

function compact(n) {
  if (n >= 1e6) return `${+(n / 1e6).toFixed(1)}M`;
  if (n >= 1e4) return `${+(n / 1e3).toFixed(1)}k`;
  return String(n);
}

function limitText(l) {
  const parts = [];
  for (const d of ["rpm", "tpm", "itpm", "otpm"]) if (l[d] !== null && l[d] !== undefined) parts.push(`${compact(l[d])} ${d}`);
  return parts.join(" · ") || "none";
}

function bar(fraction, cls) {
  const pct = Math.max(0, Math.min(1, fraction || 0)) * 100;
  return el("div", { class: `bar ${cls || ""}` }, el("div", { class: "fill", width: `${pct.toFixed(1)}%` }));
}

function renderBuckets(buckets) {
  fill("buckets", buckets.map((b) => {
    const u = b.utilisation;
    return el("tr", { "data-bucket": `${b.provider}:${b.key_hash}` },
      el("td", { text: b.provider }),
      el("td", { class: "id", text: b.key_hash }),
      el("td", { text: limitText(b.limit) }),
      el("td", { class: "num", text: `${compact(b.used.requests)} req · ${compact(b.used.tokens)} tok` }),
      el("td", {}, u === null ? "–" : el("span", { class: "util" }, bar(u, u > 0.9 ? "hot" : ""),
        el("span", { class: "num", text: `${(u * 100).toFixed(1)} %` }))),
      el("td", { class: `num ${b.rate_limited_429 ? "bad" : ""}`, text: b.rate_limited_429 }),
      el("td", { class: "num", text: b.waiting }),
      el("td", { class: b.paused_until ? "bad" : "", text: b.paused_until ? "paused" : "no" }));
  }), "no rate-limit bucket yet (or Redis unreachable)");
}

function renderWorkers(workers, leader) {
  fill("workers", workers.map((w) => el("tr", { "data-worker": w.id },
    el("td", { class: "id", text: w.id, title: w.id }),
    el("td", { text: `${w.hostname}:${w.pid}` }),
    el("td", { class: `num ${w.heartbeat_age_s > 10 ? "bad" : ""}`, text: seconds(w.heartbeat_age_s) }),
    el("td", { class: "num", text: `${w.in_flight} / ${w.concurrency}` }),
    el("td", { class: "num", text: w.jobs_done }),
    el("td", { class: "num", text: w.jobs_failed }),
    el("td", { text: (leader ? leader.worker_id === w.id : w.is_leader) ? "★ leader" : "" }),
  )), "no live worker");
}

function renderFailures(failures) {
  fill("failures", failures.map((f) => el("tr", { "data-job": f.job_id },
    el("td", { text: f.finished_at ? new Date(f.finished_at).toLocaleTimeString() : "–" }),
    el("td", { class: "id", text: f.tenant_id }),
    el("td", { class: "id", text: short(f.job_id), title: f.job_id }),
    el("td", { text: f.kind }),
    el("td", { text: f.stage || "–" }),
    el("td", { class: "num", text: f.attempt }),
    el("td", { text: f.error_code || "–" }),
    el("td", { class: "error-text", text: f.last_error || "" }),
  )), "no failed job");
}

const MAX_BATCHES = 50;  // batches kept in memory; the oldest are dropped

function mergeBatch(b) {
  const old = state.batches.get(b.batch_id) || {};
  state.batches.set(b.batch_id, { ...old, ...b });
  if (state.batches.size > MAX_BATCHES) {
    const oldest = [...state.batches.values()].sort((x, y) => (x.created_at < y.created_at ? -1 : 1))[0];
    state.batches.delete(oldest.batch_id);
  }
}

function renderBatches() {
  const list = [...state.batches.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : -1)).slice(0, 20);
  fill("batches", list.map((b) => {
    const counts = b.counts || {};
    const total = b.total || 0;
    const finished = FINISHED.reduce((a, s) => a + (counts[s] || 0), 0);
    const frac = total ? finished / total : 0;
    const progress = el("div", { class: "progress" },
      el("div", { class: "stack" }, ...FINISHED.concat(["running"]).map((s) =>
        el("div", { class: `seg ${s}`, width: `${total ? (100 * (counts[s] || 0) / total).toFixed(2) : 0}%` }))),
      el("span", { class: "num progress-text", text: `${finished} / ${total} (${Math.round(frac * 100)} %)` }));
    const active = (counts.queued || 0) + (counts.running || 0) + (counts.retrying || 0);
    return el("tr", { "data-batch": b.batch_id, "data-finished": finished, "data-total": total },
      el("td", { class: "id", text: short(b.batch_id), title: b.batch_id }),
      el("td", { class: "id", text: b.tenant_id }),
      el("td", {}, progress),
      ...STATUSES.map((s) => el("td", { class: `num count-${s}`, text: counts[s] || 0 })),
      el("td", { class: "actions" },
        action("Stop", "stop-batch", `stop-batch:${b.batch_id}`, active === 0, () => act("POST", `/v1/batches/${b.batch_id}/stop`, `batch ${short(b.batch_id)}`)),
        action("Retry failed", "retry-batch", `retry-batch:${b.batch_id}`, !(counts.failed > 0), () => act("POST", `/v1/batches/${b.batch_id}/retry`, `failed jobs of batch ${short(b.batch_id)}`))));
  }), "no batch yet");
}

// -- actions: a destructive button asks for a second click within 4 s ----------------------------
// The armed state is kept by action key, not by button: the tables are redrawn every few seconds.

function action(label, cls, key, disabled, run) {
  const armed = state.armed.has(key);
  const button = el("button", { type: "button", class: `action ${cls}${armed ? " armed" : ""}`, "data-key": key },
    armed ? `Confirm: ${label.toLowerCase()}` : label);
  button.disabled = !!disabled && !armed;
  button.addEventListener("click", () => {
    if (!state.armed.has(key)) {
      state.armed.set(key, setTimeout(() => { state.armed.delete(key); redraw(key, label); }, 4000));
      redraw(key, label);
      return;
    }
    clearTimeout(state.armed.get(key));
    state.armed.delete(key);
    for (const b of document.querySelectorAll(`button[data-key="${CSS.escape(key)}"]`)) b.disabled = true;
    run();
  });
  return button;
}

function redraw(key, label) {
  const armed = state.armed.has(key);
  for (const b of document.querySelectorAll(`button[data-key="${CSS.escape(key)}"]`)) {
    b.textContent = armed ? `Confirm: ${label.toLowerCase()}` : label;
    b.classList.toggle("armed", armed);
  }
}

async function act(method, path, what) {
  try {
    const out = await api(method, path);
    const said = out && "retried" in out ? `${out.retried} job(s) queued again` :
      out && "cancelled" in out ? `${out.cancelled} cancelled, ${out.stopping} stopping` : "done";
    message(`${what}: ${said}.`, "ok");
  } catch (err) {
    message(`${what}: ${err.message}`, "error");
  }
  await refresh();
}

// -- the event stream ------------------------------------------------------------------------------

function streamState(text, cls) {
  const s = $("stream-state");
  s.textContent = `stream: ${text}`;
  s.className = `pill ${cls || ""}`;
}

async function startStream() {
  let backoff = 500;
  while (state.token) {
    const controller = new AbortController();
    state.stream = controller;
    try {
      const headers = { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" };
      if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
      const resp = await fetch("/v1/events", { headers, signal: controller.signal, cache: "no-store",
        credentials: "omit", referrerPolicy: "no-referrer" });
      if (resp.status === 401 || resp.status === 403) { forget(); message("The token was refused; paste it again.", "error"); return; }
      if (!resp.ok || !resp.body) throw new Error(`HTTP ${resp.status}`);
      streamState("live", "live");
      backoff = 500;
      await readEvents(resp.body.getReader());
      streamState("reconnecting", "warn");
    } catch (err) {
      if (controller.signal.aborted) return;
      streamState(`reconnecting (${err.message})`, "warn");
    }
    await new Promise((r) => setTimeout(r, backoff));
    backoff = Math.min(backoff * 2, 10000);
  }
}

// Server-Sent Events, parsed as the HTML standard says: lines end in \n, \r\n or \r; a blank line
// dispatches; a line starting with ":" is a comment (the heartbeat); fields id, event, data.
async function readEvents(reader) {
  const decoder = new TextDecoder();
  let buffer = "";
  let ev = { id: null, event: "message", data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (ev.data.length) dispatch(ev);
        ev = { id: null, event: "message", data: [] };
        continue;
      }
      if (line.startsWith(":")) continue;
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      let val = i < 0 ? "" : line.slice(i + 1);
      if (val.startsWith(" ")) val = val.slice(1);
      if (field === "id") { ev.id = val; state.lastEventId = val; }
      else if (field === "event") ev.event = val;
      else if (field === "data") ev.data.push(val);
    }
  }
}

// Events are drawn at most every 250 ms: an admin's stream carries every tenant's changes, and a
// busy system sends thousands a second; only the newest MAX_EVENTS are drawn.
const incoming = [];
let flushTimer = null;

function dispatch(ev) {
  let data;
  try { data = JSON.parse(ev.data.join("\n")); } catch (_) { return; }
  incoming.push(data);
  if (incoming.length > MAX_EVENTS) incoming.splice(0, incoming.length - MAX_EVENTS);
  if (data.batch_id) {
    if (!state.batches.has(data.batch_id)) {
      mergeBatch({ batch_id: data.batch_id, tenant_id: data.tenant_id, total: 0, counts: {},
        created_at: data.at || new Date().toISOString() });
    }
    scheduleBatch(data.batch_id);
  }
  if (!flushTimer) flushTimer = setTimeout(flushEvents, 250);
}

function flushEvents() {
  flushTimer = null;
  const list = $("events");
  for (const data of incoming.splice(0)) {
    list.prepend(el("li", { "data-event": data.event },
      el("span", { class: "muted", text: data.at ? new Date(data.at).toLocaleTimeString() : "" }), " ",
      el("span", { class: "id", text: data.tenant_id }), " ",
      el("span", { class: "id", text: short(data.job_id || ""), title: data.job_id }), " ",
      el("strong", { text: data.event }),
      data.stage ? ` ${data.stage}` : "", data.status ? ` → ${data.status}` : ""));
  }
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

function scheduleBatch(id) {
  if (state.pending.has(id)) return;
  state.pending.set(id, setTimeout(async () => {
    state.pending.delete(id);
    if (!state.token) return;
    try {
      const b = await api("GET", `/v1/batches/${id}`);
      mergeBatch({ batch_id: b.id, tenant_id: b.tenant_id, total: b.total, counts: b.counts,
        finished: b.finished, created_at: b.created_at });
      renderBatches();
    } catch (_) { /* the next refresh shows it */ }
  }, BATCH_REFRESH_MS));
}

// -- start ------------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("token").value.trim();
    $("token").value = "";
    if (token) connect(token);
  });
  $("forget").addEventListener("click", forget);
  const saved = sessionStorage.getItem(KEY);
  if (saved) connect(saved);
});
