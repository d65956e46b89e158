// spb-energy community dashboard: renders the monitor's verified snapshot, live.
//
// The server sends the whole snapshot (monitor/view.py, CommunityView.snapshot) as a
// server-sent event when the page connects and again whenever the view changed, at most a
// few times a second; each one redraws the page. Every value goes in with textContent or an
// SVG attribute, never as HTML. No framework, no build step, nothing from outside.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const MAX_TRADES = 60;
const MAX_BLOCKS = 10;
const CHART_INTERVALS = 24;
const BOOK_INTERVALS = 3;
const BOOK_ROWS = 18;

// -- small helpers --

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
}

function clock(ms) {
  if (!ms) return "–";
  const d = new Date(ms);
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((x) => String(x).padStart(2, "0")).join(":");
}

function badge(state) {
  return el("span", { class: `state ${state || "none"}`, text: state || "–" });
}

function dot(on) {
  return el("span", { class: on ? "dot on" : "dot", title: on ? "online" : "offline" });
}

function cell(content, cls) {
  const td = el("td", cls ? { class: cls } : {});
  if (content instanceof Node) td.append(content);
  else td.textContent = content;
  return td;
}

function fill(tbody, rows, emptyId) {
  tbody.replaceChildren(...rows);
  if (emptyId) document.getElementById(emptyId).hidden = rows.length > 0;
}

// -- sections --

function renderMeters(meters) {
  const rows = meters.map((m) => {
    const s = m.summary || {};
    const w = s.w;
    const watts = el("span", { class: w > 0 ? "import" : w < 0 ? "export" : "", text: fmt(w) });
    return el(
      "tr",
      { "data-meter": m.meter },
      cell(el("span", {}, dot(s.online), m.meter)),
      cell(watts, "num"),
      cell(fmt(s.wh_in), "num"),
      cell(fmt(s.wh_out), "num"),
      cell(fmt(s.balance_units), "num"),
      cell(fmt(s.held_units), "num"),
      cell(fmt(s.open_trades), "num"),
      cell(s.last_trade ? badge(s.last_trade_state) : "–"),
    );
  });
  fill(document.querySelector("#meters tbody"), rows);
}

const lastStates = new Map(); // trade id -> the state shown, to flash a change

function renderTrades(trades) {
  const rows = trades.slice(0, MAX_TRADES).map((t) => {
    const changed = lastStates.has(t.ctp) && lastStates.get(t.ctp) !== t.state;
    lastStates.set(t.ctp, t.state);
    const who = `${t.payer_meter || "?"} → ${t.payee_meter || "?"}`;
    return el(
      "tr",
      { "data-trade": t.ctp, "data-state": t.state, class: changed ? "fresh" : "" },
      cell(el("span", { class: "mono", title: t.ctp, text: t.ctp.slice(0, 8) })),
      cell(who),
      cell(fmt(t.trade_wh), "num"),
      cell(badge(t.state)),
      cell(fmt(t.h), "num"),
      cell(clock(t.t_ms)),
    );
  });
  fill(document.getElementById("trades"), rows, "trades-empty");
}

function bookOrder(a, b) {
  if (a.k !== b.k) return b.k - a.k;
  if (a.side !== b.side) return a.side === "ask" ? -1 : 1;
  const pa = a.price_units_per_wh ?? 0;
  const pb = b.price_units_per_wh ?? 0;
  return a.side === "ask" ? pa - pb : pb - pa;
}

function renderBook(orders, intervalS) {
  const ks = [...new Set(orders.map((o) => o.k))].sort((a, b) => b - a).slice(0, BOOK_INTERVALS);
  const shown = orders.filter((o) => ks.includes(o.k)).sort(bookOrder).slice(0, BOOK_ROWS);
  const rows = shown.map((o) => {
    const kind = o.side === "ask" ? o.src || "" : o.green ? "green only" : o.state === "sealed" ? "sealed" : "any";
    return el(
      "tr",
      { "data-order": o.id, "data-state": o.state },
      cell(el("span", { title: `interval ${o.k}`, text: intervalS ? clock(o.k * intervalS * 1000) : String(o.k) })),
      cell(o.side),
      cell(fmt(o.wh), "num"),
      cell(fmt(o.price_units_per_wh), "num"),
      cell(fmt(o.filled_wh), "num"),
      cell(kind),
      cell(badge(o.state)),
      cell(el("span", { class: "mono", title: o.id, text: o.id.slice(0, 8) })),
    );
  });
  fill(document.querySelector("#book tbody"), rows, "book-empty");
}

function renderChart(results, intervalS) {
  const box = document.getElementById("chart");
  const shown = results.slice(-CHART_INTERVALS);
  const W = 560, H = 190, left = 40, right = 16, top = 20, bottom = 34;
  const plotW = W - left - right, plotH = H - top - bottom;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, id: "chart-svg" });
  const ks = shown.map((r) => r.k);
  const kMin = ks.length ? Math.min(...ks) : 0;
  const kMax = ks.length ? Math.max(...ks) : 1;
  const prices = shown.flatMap((r) => [r.green?.price_units_per_wh, r.open?.price_units_per_wh]).filter((p) => p != null);
  const volumes = shown.map((r) => (r.green?.wh || 0) + (r.open?.wh || 0));
  const pMax = Math.max(1, Math.ceil((Math.max(0, ...prices) * 1.2) || 1));
  const vMax = Math.max(1, ...volumes);
  const pad = 14; // the first and last intervals' points and bars clear the axes
  const x = (k) => left + pad + (kMax === kMin ? (plotW - 2 * pad) / 2 : ((k - kMin) / (kMax - kMin)) * (plotW - 2 * pad));
  const y = (p) => top + plotH - (p / pMax) * plotH;

  // y axis: price ticks and gridlines
  const step = Math.max(1, Math.ceil(pMax / 5));
  for (let p = 0; p <= pMax; p += step) {
    root.append(svg("line", { class: "gridline", x1: left, x2: W - right, y1: y(p), y2: y(p) }));
    root.append(svg("text", { class: "label", x: left - 6, y: y(p) + 4, "text-anchor": "end" }, String(p)));
  }
  root.append(svg("text", { class: "label", x: left - 6, y: 11, "text-anchor": "end" }, "u/Wh"));

  // volume bars behind the prices: the Wh cleared in each interval (scaled to a third of the height)
  const barW = Math.max(3, Math.min(16, plotW / Math.max(1, shown.length) - 4));
  shown.forEach((r, i) => {
    const h = (volumes[i] / vMax) * plotH * 0.33;
    const bar = svg("rect", { class: "volume", x: x(r.k) - barW / 2, y: top + plotH - h, width: barW, height: h });
    bar.append(svg("title", {}, `interval ${r.k}: ${fmt(volumes[i])} Wh cleared, ${fmt(r.fills)} fills`));
    root.append(bar);
  });

  if (shown.length) {
    const yBar = top + plotH - plotH * 0.33;
    root.append(svg("line", { class: "gridline", x1: W - right - 4, x2: W - right, y1: yBar, y2: yBar }));
    root.append(svg("text", { class: "label", x: W - right, y: yBar - 3, "text-anchor": "end" }, `${fmt(vMax)} Wh`));
  }

  // x axis: the intervals' start times
  root.append(svg("line", { class: "axis", x1: left, x2: W - right, y1: top + plotH, y2: top + plotH }));
  root.append(svg("line", { class: "axis", x1: left, x2: left, y1: top, y2: top + plotH }));
  const ticks = Math.min(shown.length, 6);
  for (let i = 0; i < ticks; i++) {
    const r = shown[Math.round((i * (shown.length - 1)) / Math.max(1, ticks - 1))];
    const label = intervalS ? clock(r.k * intervalS * 1000) : String(r.k);
    const anchor = ticks > 1 && i === ticks - 1 ? "end" : ticks > 1 && i === 0 ? "start" : "middle";
    root.append(svg("text", { class: "label", x: x(r.k), y: top + plotH + 14, "text-anchor": anchor }, label));
  }
  root.append(
    svg("text", { class: "label", x: left + plotW / 2, y: H - 3, "text-anchor": "middle" }, "interval (start time)"),
  );

  // the two products' clearing prices: a line through the intervals that cleared, a point each
  for (const product of ["green", "open"]) {
    const pts = shown.filter((r) => r[product] && r[product].price_units_per_wh != null);
    if (pts.length > 1) {
      const d = pts.map((r, i) => `${i ? "L" : "M"}${x(r.k).toFixed(1)},${y(r[product].price_units_per_wh).toFixed(1)}`);
      root.append(svg("path", { class: `line ${product}`, d: d.join(" ") }));
    }
    for (const r of pts) {
      const p = r[product].price_units_per_wh;
      const radius = product === "green" ? 5.5 : 3; // green rings the open point when both clear at one price
      const point = svg("circle", { class: `point ${product}`, cx: x(r.k), cy: y(p), r: radius, "data-k": r.k });
      point.append(svg("title", {}, `interval ${r.k}, ${product}: ${p} u/Wh for ${fmt(r[product].wh)} Wh`));
      root.append(point);
    }
  }
  if (!shown.length) {
    root.append(svg("text", { class: "label", x: left + plotW / 2, y: top + plotH / 2, "text-anchor": "middle" }, "no interval cleared yet"));
  }
  box.replaceChildren(root);
  const last = shown[shown.length - 1];
  document.getElementById("chart-note").textContent = last
    ? `last: interval ${last.k} · green ${fmt(last.green?.price_units_per_wh)} · open ${fmt(last.open?.price_units_per_wh)} u/Wh · bars: Wh cleared`
    : "";
}

function renderValidators(validators) {
  const rows = validators.map((v) =>
    el(
      "tr",
      { "data-validator": v.validator },
      cell(el("span", {}, dot(v.online), v.validator)),
      cell(fmt(v.height), "num"),
      cell(fmt(v.round), "num"),
      cell(fmt(v.round_changes), "num"),
    ),
  );
  fill(document.querySelector("#validators tbody"), rows);
}

function renderBlocks(blocks) {
  const rows = blocks
    .slice(-MAX_BLOCKS)
    .reverse()
    .map((b) =>
      el(
        "tr",
        { "data-height": b.height },
        cell(fmt(b.height), "num"),
        cell(clock(b.t_ms)),
        cell(fmt(b.trades), "num"),
        cell(fmt(b.seals), "num"),
        cell(fmt(b.bytes), "num"),
      ),
    );
  fill(document.querySelector("#blocks tbody"), rows);
}

function renderCounts(id, counts) {
  const rows = Object.entries(counts || {})
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .map(([reason, n]) => el("tr", { "data-reason": reason }, cell(reason), cell(fmt(n), "num")));
  fill(document.querySelector(`#${id} tbody`), rows, `${id}-empty`);
}

function render(snap) {
  renderMeters(snap.meters || []);
  renderTrades(snap.trades || []);
  renderBook(snap.orders || [], snap.interval_s);
  renderChart(snap.results || [], snap.interval_s);
  renderValidators(snap.validators || []);
  renderBlocks(snap.blocks || []);
  renderCounts("rejects", snap.rejects);
  renderCounts("unverified", snap.unverified);
  const blocks = snap.blocks || [];
  document.getElementById("height").textContent = blocks.length ? fmt(blocks[blocks.length - 1].height) : "–";
  document.getElementById("interval").textContent = snap.interval_s ? `${snap.interval_s} s` : "–";
  document.getElementById("updated").textContent = clock(Date.now());
}

// -- the live stream --

function setLink(state, text) {
  const link = document.getElementById("link");
  link.className = `link ${state}`;
  link.textContent = text;
}

function connect() {
  const events = new EventSource("/api/events");
  events.addEventListener("open", () => setLink("live", "live"));
  events.addEventListener("error", () => setLink("lost", "reconnecting…")); // EventSource retries by itself
  events.addEventListener("snapshot", (e) => {
    render(JSON.parse(e.data));
    document.body.dataset.version = e.lastEventId;
  });
}

connect();
