// The zs-web dashboard: polls /api/stats once a second and draws with uPlot.
const KEEP = 180; // points (seconds) kept
const state = { ticks: 0, t: [], conns: [], ws: [], cmds: new Map(), last: null, charts: {}, names: "" };
window.zsDashboard = state;

const fmt = (n) => (n >= 1e9 ? (n / 1e9).toFixed(1) + "G" : n >= 1e6 ? (n / 1e6).toFixed(1) + "M" : n >= 1e4 ? (n / 1e3).toFixed(1) + "k" : String(Math.round(n)));
const palette = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];

function width(el) {
  return Math.max(200, el.clientWidth || 300);
}

function makeChart(id, series, yLabel, style) {
  const el = document.getElementById(id);
  el.innerHTML = "";
  const st = style || ((s, i) => ({ label: s, stroke: palette[i % palette.length], width: 2 }));
  const opts = {
    width: width(el),
    height: 200,
    series: [{}].concat(series.map(st)),
    axes: [{}, { label: yLabel, size: 60 }],
    scales: { x: { time: true } },
    legend: { live: false },
  };
  const data = [[]].concat(series.map(() => []));
  return new uPlot(opts, data, el);
}

function push(arr, v) {
  arr.push(v);
  if (arr.length > KEEP) arr.shift();
}

function cmdSeries(name) {
  let s = state.cmds.get(name);
  if (!s) {
    // New command: back-fill so every series has the same length as `t`.
    s = { calls: state.t.map(() => null), bytes: state.t.map(() => null), p50: state.t.map(() => null), p99: state.t.map(() => null) };
    state.cmds.set(name, s);
  }
  return s;
}

function render() {
  const names = [...state.cmds.keys()].sort();
  const key = names.join("\u0000");
  if (key !== state.names || !state.charts.conns) {
    state.names = key;
    state.charts.conns = state.charts.conns || makeChart("chart-conns", ["zs connections", "WebSocket sessions"], "open");
    state.charts.calls = makeChart("chart-calls", names, "calls/s");
    state.charts.bytes = makeChart("chart-bytes", names, "bytes/s");
    // p99 solid, p50 dashed, same colour per command.
    const lat = names.flatMap((n) => [n + " p99", n + " p50"]);
    state.charts.lat = makeChart("chart-lat", lat, "ms", (s, i) => ({
      label: s,
      stroke: palette[Math.floor(i / 2) % palette.length],
      width: i % 2 ? 1 : 2,
      dash: i % 2 ? [4, 4] : undefined,
    }));
  }
  state.charts.conns.setData([state.t, state.conns, state.ws]);
  state.charts.calls.setData([state.t].concat(names.map((n) => state.cmds.get(n).calls)));
  state.charts.bytes.setData([state.t].concat(names.map((n) => state.cmds.get(n).bytes)));
  state.charts.lat.setData([state.t].concat(names.flatMap((n) => [state.cmds.get(n).p99, state.cmds.get(n).p50])));
}

function table(id, rows) {
  const tb = document.querySelector(`#${id} tbody`);
  tb.innerHTML = "";
  for (const r of rows) {
    const tr = document.createElement("tr");
    for (const c of r) {
      const td = document.createElement("td");
      td.textContent = c;
      tr.appendChild(td);
    }
    tb.appendChild(tr);
  }
}

async function tick() {
  let s;
  try {
    const r = await fetch("/api/stats", { cache: "no-store" });
    s = await r.json();
    document.getElementById("status").textContent = `live · updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    document.getElementById("status").textContent = `offline (${e})`;
    return;
  }
  const now = Date.now() / 1000;
  const srv = s.server || { commands: [], connections_open: 0 };
  const prev = state.last;
  const dt = prev ? Math.max(0.001, now - prev.at) : 1;
  const prevCmd = new Map((prev?.srv.commands || []).map((c) => [c.kind + ":" + c.name, c]));
  push(state.t, now);
  push(state.conns, srv.connections_open);
  push(state.ws, s.web.open);
  let calls = 0, rate = 0, bytes = 0;
  const seen = new Set();
  for (const c of srv.commands) {
    const k = c.kind + ":" + c.name;
    const name = c.kind === "console" ? c.name : `${c.name} (${c.kind})`;
    seen.add(name);
    const p = prevCmd.get(k);
    const cr = p ? (c.calls - p.calls) / dt : 0;
    const br = p ? (c.bytes_in + c.bytes_out - p.bytes_in - p.bytes_out) / dt : 0;
    const ser = cmdSeries(name);
    push(ser.calls, cr);
    push(ser.bytes, br);
    push(ser.p99, c.p99_us / 1000);
    push(ser.p50, c.p50_us / 1000);
    calls += c.calls;
    rate += cr;
    bytes += br;
  }
  for (const [name, ser] of state.cmds) {
    if (!seen.has(name)) {
      push(ser.calls, null);
      push(ser.bytes, null);
      push(ser.p99, null);
      push(ser.p50, null);
    }
  }
  state.last = { at: now, srv };
  state.ticks++;
  state.calls = calls;
  state.rate = rate;
  document.getElementById("kpi-conns").textContent = fmt(srv.connections_open);
  document.getElementById("kpi-ws").textContent = fmt(s.web.open);
  document.getElementById("kpi-calls").textContent = fmt(calls);
  document.getElementById("kpi-rate").textContent = fmt(rate);
  document.getElementById("kpi-bytes").textContent = fmt(bytes);
  table("latency", srv.commands.map((c) => [c.name, c.kind, fmt(c.calls), fmt(c.errors), c.p50_us, c.p90_us, c.p99_us, c.max_us]));
  const w = s.web;
  table("counters", [
    ["StableIO sessions", srv.stable_sessions ?? 0],
    ["StableIO resumed", srv.stable_resumed ?? 0],
    ["StableIO expired", srv.stable_expired ?? 0],
    ["StableIO evicted", srv.stable_evicted ?? 0],
    ["StableIO resume refused", srv.stable_rejected ?? 0],
    ["StableIO unacked bytes", srv.stable_unacked_bytes ?? 0],
    ["unknown commands", srv.unknown_commands ?? 0],
    ["protocol errors (zs)", srv.protocol_errors ?? 0],
    ["connections refused (zs)", srv.refused_connections ?? 0],
    ["busy refusals", srv.busy_refusals ?? 0],
    ["bad WebSocket messages", w.bad_messages],
    ["WebSocket protocol errors / oversized", w.protocol_errors],
    ["slow readers disconnected", w.slow_readers],
    ["HTTP connections refused", w.refused],
  ].map(([k, v]) => [k, fmt(v)]));
  panels(s.panels || []);
  render();
}

// Extra panels (XNat mappings, DB service queries, ...): one card each.
function panels(list) {
  const root = document.getElementById("panels");
  const key = list.map((p) => p.title + "\u0001" + p.columns.join("\u0000")).join("\u0002");
  if (root.dataset.key !== key) {
    root.dataset.key = key;
    root.innerHTML = "";
    list.forEach((p, i) => {
      const card = document.createElement("div");
      card.className = "card";
      const h = document.createElement("h2");
      h.textContent = p.title;
      const wrap = document.createElement("div");
      wrap.className = "scroll";
      const t = document.createElement("table");
      t.id = "panel-" + i;
      const head = t.createTHead().insertRow();
      for (const c of p.columns) {
        const th = document.createElement("th");
        th.textContent = c;
        head.appendChild(th);
      }
      t.createTBody();
      wrap.appendChild(t);
      card.append(h, wrap);
      root.appendChild(card);
    });
  }
  list.forEach((p, i) => {
    const body = document.querySelector(`#panel-${i} tbody`);
    body.innerHTML = "";
    for (const r of p.rows) {
      const tr = body.insertRow();
      for (const c of r) tr.insertCell().textContent = c;
    }
  });
}

window.addEventListener("resize", () => {
  for (const c of Object.values(state.charts)) {
    const el = c.root.parentElement;
    c.setSize({ width: width(el), height: 200 });
  }
});
tick();
setInterval(tick, 1000);
