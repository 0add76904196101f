// featureproxy status page: polls /stats (same origin) and draws it. No framework, no build step;
// served by the proxy itself under a Content-Security-Policy that allows this file and nothing else.
"use strict";

const STATUSES = ["fresh", "stale", "missing", "expired", "degraded", "invalid"];
const DEFAULTS = ["missing", "expired", "degraded", "invalid"];
const KEEP = 300; // points kept and drawn: five minutes at one a second
const VALUES_PER_VIEW = 5; // the worst-drifting features shown per view

// The thresholds of deploy/prometheus/alerts.yml.
const PSI_MAX = 0.2; // FeatureproxyFeatureDrift
const SHARE_JUMP_MAX = 0.05; // FeatureproxyFeatureZeroShareJump, FeatureproxyFeatureDefaultShareJump
const SLO_P99_MS = 1; // FeatureproxyGetLatencyHigh, for views above 1 GET/s
const DEFAULTS_MAX = 0.05; // FeatureproxyDefaultsServedHigh
const DEGRADED_MAX = 0.01; // FeatureproxyDegradedServed
const ERRORS_MAX = 0.01; // FeatureproxyErrorsSpiking (a code above 1% of requests and 0.1/s)
const PUTS_FAILING_MAX = 0.01; // FeatureproxyPutsFailing

// Poll every second, or every ?every=N seconds; never faster than once a second.
const EVERY_MS = Math.min(60, Math.max(1, Number(new URLSearchParams(location.search).get("every")) || 1)) * 1000;
const SVG = "http://www.w3.org/2000/svg";

let prev = null; // the last sample taken in (from /stats or /stats/history)
let prevStats = null; // the last /stats
let lastOkAt = 0; // browser time of the last answer, for "stale Ns" only
const points = []; // per sample after the first: rates, shares and latencies, oldest first

// ---- numbers -------------------------------------------------------------------------------

function fmtRate(x) {
  if (x == null || !isFinite(x)) return "–";
  if (x >= 10000) return (x / 1000).toFixed(1) + "k";
  return x >= 100 ? Math.round(x).toString() : x.toFixed(1);
}

function fmtMs(x) {
  if (x == null || !isFinite(x)) return "–";
  return x < 1 ? x.toFixed(3) : x < 10 ? x.toFixed(2) : x.toFixed(0);
}

function fmtPct(x) {
  if (x == null || !isFinite(x)) return "–";
  if (x === 0) return "0%";
  const p = x * 100;
  return (p < 0.1 ? p.toFixed(2) : p < 10 ? p.toFixed(1) : p.toFixed(0)) + "%";
}

function fmtDuration(s) {
  if (s == null || !isFinite(s)) return "–";
  if (s < 1) return Math.round(s * 1000) + "ms";
  if (s < 60) return (s < 10 ? s.toFixed(1) : Math.round(s)) + "s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + "m" + (s % 60 >= 1 ? Math.floor(s % 60) + "s" : "");
  const h = Math.floor(m / 60);
  if (h < 48) return h + "h" + (m % 60 ? (m % 60) + "m" : "");
  return Math.floor(h / 24) + "d" + (h % 24 ? (h % 24) + "h" : "");
}

function fmtBytes(n) {
  if (n < 1024 * 1024) return (n / 1024).toFixed(0) + " KiB";
  if (n < 1024 * 1024 * 1024) return (n / 1024 / 1024).toFixed(1) + " MiB";
  return (n / 1024 / 1024 / 1024).toFixed(2) + " GiB";
}

function fmtCount(n) {
  return n.toLocaleString("en-US");
}

function fmtClock(ms) {
  return new Date(ms).toISOString().slice(11, 19) + " UTC";
}

// ---- the model: samples in, points out ----------------------------------------------------

// Takes in one sample (the paths of /stats that /stats/history also has). Rates are counter
// deltas over the server's clock (now_ms): a throttled tab or a headless browser's virtual time
// does not bend them.
function ingest(s) {
  if (prev && s.now_ms > prev.now_ms && s.merged.gets >= prev.merged.gets) {
    const dt = (s.now_ms - prev.now_ms) / 1000;
    const rate = (k) => (s.merged[k] - prev.merged[k]) / dt;
    const pt = { t: s.now_ms, gets: rate("gets"), shed: rate("requests_shed"), errors: rate("requests_failed"), views: {} };
    for (const [name, v] of Object.entries(s.views)) {
      const p = prev.views[name];
      const counts = {};
      let n = 0;
      for (const st of STATUSES) {
        counts[st] = p ? v.entities[st] - p.entities[st] : 0;
        n += counts[st];
      }
      const hits = p ? v.cache_hits - p.cache_hits : 0;
      const misses = p ? v.cache_misses - p.cache_misses : 0;
      const shares = n > 0 ? Object.fromEntries(STATUSES.map((st) => [st, counts[st] / n])) : null;
      pt.views[name] = {
        gets: v.gets_last_s,
        p50: v.get_p50_ms,
        p99: v.get_p99_ms,
        shares,
        defaults: shares ? DEFAULTS.reduce((a, st) => a + shares[st], 0) : null,
        hit: hits + misses > 0 ? hits / (hits + misses) : null,
      };
    }
    points.push(pt);
    if (points.length > KEEP) points.shift();
  }
  prev = s;
}

// What alerts.yml would page on, judged on the last second: [alert, severity, what].
function alertConditions(s, p, pt) {
  const out = [];
  const down = s.shards.filter((sh) => !sh.redis_connected).map((sh) => sh.shard);
  if (down.length) out.push(["FeatureproxyRedisDisconnected", "critical", `no Redis connection on shard ${down.join(", ")}`]);
  const open = s.shards.filter((sh) => sh.breaker_state !== "closed");
  if (open.length) {
    const what = open.map((sh) => `shard ${sh.shard} ${sh.breaker_state.replace("_", "-")}`).join(", ");
    out.push(["FeatureproxyBreakerOpen", "critical", `circuit breaker not closed: ${what}`]);
  }
  if (!s.config.last_reload_ok) out.push(["FeatureproxyReloadRefused", "warning", `the last reload was refused: ${s.config.last_reload_error}`]);
  for (const [name, v] of Object.entries(pt ? pt.views : {})) {
    if (v.shares && v.shares.degraded > DEGRADED_MAX) out.push(["FeatureproxyDegradedServed", "critical", `${name}: ${fmtPct(v.shares.degraded)} of entities DEGRADED`]);
    if (v.gets > 1 && v.p99 > SLO_P99_MS) out.push(["FeatureproxyGetLatencyHigh", "warning", `${name}: GET p99 ${fmtMs(v.p99)} ms (SLO 1 ms)`]);
    if (v.defaults > DEFAULTS_MAX) out.push(["FeatureproxyDefaultsServedHigh", "warning", `${name}: ${fmtPct(v.defaults)} of entities served with defaults`]);
    if (v.shares && v.shares.invalid > 0) out.push(["FeatureproxyInvalidValues", "warning", `${name}: unreadable values in Redis (${fmtPct(v.shares.invalid)} INVALID)`]);
  }
  for (const v of s.values || []) {
    for (const f of v.features) {
      const w = f.window, name = `${v.view}.${f.feature}`;
      if (w.psi != null && w.psi > PSI_MAX) out.push(["FeatureproxyFeatureDrift", "warning", `${name}: PSI ${w.psi.toFixed(2)} against its training baseline`]);
      if (w.zero_share != null && f.baseline_zero_share != null && w.zero_share - f.baseline_zero_share > SHARE_JUMP_MAX) out.push(["FeatureproxyFeatureZeroShareJump", "warning", `${name}: ${fmtPct(w.zero_share)} zeros, ${fmtPct(f.baseline_zero_share)} in training`]);
      if (!f.default_is_zero && w.default_share != null && f.baseline_default_share != null && w.default_share - f.baseline_default_share > SHARE_JUMP_MAX) out.push(["FeatureproxyFeatureDefaultShareJump", "warning", `${name}: ${fmtPct(w.default_share)} equal the default, ${fmtPct(f.baseline_default_share)} in training`]);
      const pf = p && (p.values || []).find((q) => q.view === v.view);
      const before = pf && pf.features.find((q) => q.feature === f.feature);
      if (before && f.non_finite_total > before.non_finite_total) out.push(["FeatureproxyFeatureNonFinite", "warning", `${name}: NaN or infinity read from Redis`]);
    }
  }
  if (p && s.now_ms > p.now_ms) {
    const dt = (s.now_ms - p.now_ms) / 1000;
    const m = s.merged, pm = p.merged;
    for (const kind of ["timeout", "unavailable"]) {
      const d = m.redis_errors[kind] - pm.redis_errors[kind];
      if (d > 0) out.push(["FeatureproxyRedisErrors", "warning", `Redis ${kind} errors: ${fmtRate(d / dt)}/s`]);
    }
    const refused = m.connections_refused - pm.connections_refused;
    if (refused > 0) out.push(["FeatureproxyConnectionsRefused", "warning", `${refused} client connection(s) refused`]);
    const requests = m.requests_ok + m.requests_failed - pm.requests_ok - pm.requests_failed;
    for (const [code, n] of Object.entries(m.errors)) {
      const d = n - (pm.errors[code] || 0);
      if (code === "internal" && d > 0) out.push(["FeatureproxyInternalErrors", "warning", `${d} INTERNAL error(s): a featureproxy bug`]);
      if (requests > 0 && d / requests > ERRORS_MAX && d / dt > 0.1) out.push(["FeatureproxyErrorsSpiking", "warning", `${code.toUpperCase()} errors: ${fmtPct(d / requests)} of requests`]);
    }
    const puts = (st, k) => st.shards.reduce((a, sh) => a + sh.requests.put[k], 0);
    const putErr = puts(s, "error") - puts(p, "error");
    const putAll = putErr + puts(s, "ok") - puts(p, "ok");
    if (putAll > 0 && putErr / putAll > PUTS_FAILING_MAX) out.push(["FeatureproxyPutsFailing", "warning", `${fmtPct(putErr / putAll)} of PUTs fail`]);
  }
  return out;
}

// ---- the page ------------------------------------------------------------------------------

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

function svgEl(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function setText(id, text, cls) {
  const e = document.getElementById(id);
  e.textContent = text;
  if (cls !== undefined) e.className = cls;
  return e;
}

// A cell's text and state: "bad" (red: an alert condition), "warn", "ok" or "".
function cell(td, text, state) {
  td.textContent = text;
  td.className = td.dataset.col + (state ? " " + state : "");
}

// An inline SVG polyline of `values` (oldest first, one per second, newest at the right edge),
// scaled to their maximum or to `limit` (drawn dashed) if that is higher.
function spark(svg, values, limit) {
  if (!svg.firstChild) {
    svg.append(svgEl("line", { class: "limit", x1: 0, x2: 300 }), svgEl("polyline", { class: "line" }), svgEl("title"));
  }
  const [line, poly, title] = svg.childNodes;
  const known = values.filter((v) => v != null && isFinite(v));
  const max = Math.max(limit || 0, ...known) || 1;
  const y = (v) => (38 - (v / max) * 36).toFixed(1);
  const pts = [];
  values.forEach((v, i) => {
    if (v != null && isFinite(v)) pts.push(`${300 - (values.length - 1 - i)},${y(v)}`);
  });
  poly.setAttribute("points", pts.join(" "));
  line.setAttribute("visibility", limit ? "visible" : "hidden");
  if (limit) {
    line.setAttribute("y1", y(limit));
    line.setAttribute("y2", y(limit));
  }
  title.textContent = known.length ? `last ${known[known.length - 1].toFixed(3)}, max ${Math.max(...known).toFixed(3)} over ${known.length} s` : "no data yet";
}

// A 100-wide bar of the status shares.
function statusBar(svg, shares) {
  if (!svg.firstChild) for (const st of STATUSES) svg.append(svgEl("rect", { class: st, y: 0, height: 10 }));
  let x = 0;
  STATUSES.forEach((st, i) => {
    const w = shares ? shares[st] * 100 : 0;
    svg.childNodes[i].setAttribute("x", x.toFixed(2));
    svg.childNodes[i].setAttribute("width", w.toFixed(2));
    x += w;
  });
}

const VIEW_COLS = ["name", "gets", "p50", "p99", "defaults", "mix", "hit", "age", "limits", "spark-gets", "spark-p99"];
const viewRows = new Map();

function viewRow(name) {
  const tr = el("tr");
  tr.dataset.view = name;
  const cells = {};
  for (const c of VIEW_COLS) {
    const td = el("td", c);
    td.dataset.col = c;
    cells[c] = td;
    tr.append(td);
  }
  cells.name.textContent = name;
  cells.mix.append(svgEl("svg", { class: "bar", viewBox: "0 0 100 10", preserveAspectRatio: "none" }), el("div", "mixtext"));
  for (const c of ["spark-gets", "spark-p99"]) cells[c].append(svgEl("svg", { class: "spark", viewBox: "0 0 300 40", preserveAspectRatio: "none" }));
  return { tr, cells };
}

function renderViews(s, pt) {
  const tbody = document.querySelector("#views tbody");
  const names = Object.keys(s.views).sort((a, b) => s.views[a].id - s.views[b].id);
  for (const [name, row] of viewRows) {
    if (!(name in s.views)) {
      row.tr.remove();
      viewRows.delete(name);
    }
  }
  names.forEach((name, i) => {
    if (!viewRows.has(name)) viewRows.set(name, viewRow(name));
    const { tr, cells } = viewRows.get(name);
    if (tbody.rows[i] !== tr) tbody.insertBefore(tr, tbody.rows[i] || null);
    const v = s.views[name];
    const p = pt && pt.views[name];
    cell(cells.gets, fmtRate(v.gets_last_s));
    cell(cells.p50, v.gets_last_s ? fmtMs(v.get_p50_ms) : "–");
    cell(cells.p99, v.gets_last_s ? fmtMs(v.get_p99_ms) : "–", v.gets_last_s > 1 && v.get_p99_ms > SLO_P99_MS ? "bad" : "");
    const bad = p && (p.defaults > DEFAULTS_MAX || (p.shares && (p.shares.degraded > DEGRADED_MAX || p.shares.invalid > 0)));
    cell(cells.defaults, p ? fmtPct(p.defaults) : "–", bad ? "bad" : "");
    statusBar(cells.mix.firstChild, p && p.shares);
    const notFresh = p && p.shares ? STATUSES.filter((st) => st !== "fresh" && p.shares[st] > 0).map((st) => `${st} ${fmtPct(p.shares[st])}`) : [];
    cells.mix.lastChild.textContent = !p || !p.shares ? "no entities served" : notFresh.length ? notFresh.join(" · ") : "all fresh";
    cell(cells.hit, v.hot_cache_ttl_s === 0 ? "off" : p && p.hit != null ? fmtPct(p.hit) : "–");
    const age = v.gets_last_s && v.age_max_s > 0 ? `${fmtDuration(v.age_p99_s)} / ${fmtDuration(v.age_max_s)}` : "–";
    const ageState = v.age_max_s > v.max_staleness_s ? "expired" : v.age_max_s > v.stale_after_s ? "warn" : "";
    cell(cells.age, age, ageState);
    cell(cells.limits, `${fmtDuration(v.stale_after_s)} / ${fmtDuration(v.max_staleness_s)}`);
    spark(cells["spark-gets"].firstChild, points.map((q) => q.views[name] && q.views[name].gets));
    spark(cells["spark-p99"].firstChild, points.map((q) => q.views[name] && q.views[name].gets ? q.views[name].p99 : null), SLO_P99_MS);
  });
}

function renderShards(s) {
  const tbody = document.querySelector("#shards tbody");
  while (tbody.rows.length > s.shards.length) tbody.lastChild.remove();
  s.shards.forEach((sh, i) => {
    let tr = tbody.rows[i];
    if (!tr) {
      tr = el("tr");
      for (const c of ["shard", "redis", "breaker", "tracking", "inflight", "conns", "cache", "entries"]) {
        const td = el("td", c);
        td.dataset.col = c;
        tr.append(td);
      }
      tbody.append(tr);
    }
    tr.dataset.shard = sh.shard;
    const [shard, redis, breaker, tracking, inflight, conns, cache, entries] = tr.cells;
    cell(shard, String(sh.shard));
    cell(redis, sh.redis_connected ? "up" : "down", sh.redis_connected ? "ok" : "bad");
    cell(breaker, sh.breaker_state.replace("_", "-"), sh.breaker_state === "closed" ? "ok" : "bad");
    cell(tracking, sh.tracking_armed ? "on" : "off");
    cell(inflight, fmtCount(sh.inflight_requests));
    cell(conns, fmtCount(sh.connections_open));
    cell(cache, `${fmtBytes(sh.cache.bytes)} / ${fmtBytes(sh.cache.capacity_bytes)}`);
    cell(entries, fmtCount(sh.cache.entries));
  });
}

// Cluster nodes as all shards see them together.
function renderNodes(s) {
  const nodes = new Map();
  for (const sh of s.shards) {
    for (const n of sh.cluster_nodes) {
      const m = nodes.get(n.node) || { node: n.node, replica: false, connected: 0, seen: 0, open: 0, keys: 0, errors: 0 };
      m.replica = m.replica || n.role === "replica";
      m.seen += 1;
      m.connected += n.connected ? 1 : 0;
      m.open += n.breaker_state === "open" ? 1 : 0;
      m.keys += n.keys;
      m.errors += n.errors;
      nodes.set(n.node, m);
    }
  }
  const table = document.getElementById("nodes");
  table.hidden = nodes.size === 0;
  const tbody = table.tBodies[0];
  tbody.replaceChildren();
  for (const m of [...nodes.values()].sort((a, b) => a.node.localeCompare(b.node))) {
    const tr = el("tr");
    tr.dataset.node = m.node;
    const down = m.connected < m.seen;
    const state = down ? (m.replica ? "warn" : "bad") : m.open ? "bad" : "ok";
    tr.append(
      el("td", "node", m.node),
      el("td", "role", m.replica ? "replica" : "primary"),
      el("td", "state " + state, down ? "down" : m.open ? "breaker open" : "up"),
      el("td", "num", `${m.connected} / ${m.seen}`),
      el("td", "num" + (m.open ? " bad" : ""), String(m.open)),
      el("td", "num", fmtCount(m.keys)),
      el("td", "num", fmtCount(m.errors)),
    );
    tbody.append(tr);
  }
}

// Per view, the features furthest from their baseline: by PSI, then by zero-share jump.
function renderValues(s) {
  const tbody = document.querySelector("#values tbody");
  tbody.replaceChildren();
  for (const v of s.values || []) {
    const jump = (f) => (f.window.zero_share != null && f.baseline_zero_share != null ? f.window.zero_share - f.baseline_zero_share : 0);
    const worst = [...v.features].sort((a, b) => (b.window.psi || 0) - (a.window.psi || 0) || jump(b) - jump(a)).slice(0, VALUES_PER_VIEW);
    for (const f of worst) {
      const w = f.window;
      const share = (x, base) => (x == null ? "–" : fmtPct(x)) + " / " + (base == null ? "–" : fmtPct(base));
      const tr = el("tr");
      tr.dataset.view = v.view;
      tr.dataset.feature = f.feature;
      tr.append(
        el("td", "view", v.view),
        el("td", "feature", f.feature),
        el("td", "num psi" + (w.psi != null && w.psi > PSI_MAX ? " bad" : ""), w.psi == null ? "–" : w.psi.toFixed(3)),
        el("td", "num zero" + (jump(f) > SHARE_JUMP_MAX ? " bad" : ""), share(w.zero_share, f.baseline_zero_share)),
        el("td", "num default", share(w.default_share, f.baseline_default_share)),
        el("td", "num nonfinite" + (f.non_finite_total ? " warn" : ""), fmtCount(f.non_finite_total)),
        el("td", "num samples", fmtCount(w.n)),
      );
      tr.title = f.psi_absent || "";
      tbody.append(tr);
    }
  }
}

function renderAlerts(list) {
  const ul = document.getElementById("alerts");
  ul.replaceChildren();
  if (!list.length) ul.append(el("li", "ok", "none: nothing alerts.yml pages or warns on holds now"));
  for (const [name, severity, what] of list) {
    const li = el("li", "bad " + severity);
    li.dataset.alert = name;
    // Each alert's runbook_url in alerts.yml is its section of docs/runbooks.md.
    const runbook = el("span", "runbook", `runbook: docs/runbooks.md#${name.toLowerCase()}`);
    li.append(el("strong", null, name), el("span", "severity", severity), el("span", null, what), runbook);
    ul.append(li);
  }
  document.title = (list.length ? `(${list.length}) ` : "") + "featureproxy status";
}

function render(s, p) {
  const pt = points[points.length - 1];
  setText("version", "v" + s.version);
  setText("uptime", fmtDuration(s.uptime_s));
  setText("shards-count", String(s.shards.length));
  const c = s.config;
  let config = `generation ${c.generation}`;
  if (c.last_reload_unix_ms) config += c.last_reload_ok ? `, reloaded ${fmtClock(c.last_reload_unix_ms)}` : `, reload refused ${fmtClock(c.last_reload_unix_ms)}: ${c.last_reload_error}`;
  setText("config", config, c.last_reload_ok ? "" : "warn");
  setText("connections", fmtCount(s.merged.connections_open));
  setText("gets-rate", pt ? fmtRate(pt.gets) : "–");
  setText("gets-total", fmtCount(s.merged.gets));
  setText("shed-rate", pt ? fmtRate(pt.shed) : "–", pt && pt.shed > 0 ? "warn" : "");
  setText("errors-rate", pt ? fmtRate(pt.errors) : "–");
  setText("updated", fmtClock(s.now_ms)).dataset.nowMs = s.now_ms;
  renderAlerts(alertConditions(s, p, pt));
  renderViews(s, pt);
  renderValues(s);
  renderShards(s);
  renderNodes(s);
  spark(document.getElementById("spark-gets"), points.map((q) => q.gets));
  spark(document.getElementById("spark-shed"), points.map((q) => q.shed));
  spark(document.getElementById("spark-errors"), points.map((q) => q.errors));
}

// ---- polling -------------------------------------------------------------------------------

async function getJson(path) {
  const r = await fetch(path, { cache: "no-store", signal: AbortSignal.timeout(3000) });
  if (!r.ok) throw new Error(`${path} answered HTTP ${r.status}`);
  return r.json();
}

function showStale(why) {
  const banner = document.getElementById("banner");
  const age = lastOkAt ? `numbers below are stale ${Math.round((Date.now() - lastOkAt) / 1000)}s` : "no answer yet";
  banner.textContent = `stats unreachable (${why}): ${age}`;
  banner.hidden = false;
  document.body.classList.add("stale");
}

async function poll() {
  try {
    const s = await getJson("/stats");
    ingest(s);
    render(s, prevStats);
    prevStats = s;
    lastOkAt = Date.now();
    document.getElementById("banner").hidden = true;
    document.body.classList.remove("stale");
  } catch (e) {
    showStale(e.name === "TimeoutError" ? "no answer within 3 s" : e.message);
  }
  schedule();
}

// The next poll one interval after this answer (never piling up behind a slow one), and none
// while the tab is hidden.
let parked = false;
function schedule() {
  if (document.hidden) {
    parked = true;
    return;
  }
  setTimeout(poll, EVERY_MS);
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && parked) {
    parked = false;
    poll();
  }
});

// The minutes before the page opened first, so the sparklines are full at once.
(async () => {
  try {
    for (const s of (await getJson("/stats/history")).samples) ingest(s);
  } catch (e) {
    // Without history the page draws from its own polls.
  }
  poll();
})();
