// The VV console page: reads /api/*, re-reads what the live stream (/api/events) says changed.
// No build step, no framework; every text goes in through textContent (never innerHTML).
"use strict";

const body = document.body;
const PAGE = body.dataset.page;
const ARG = body.dataset.arg;
const OPERATOR = body.dataset.role === "operator";
const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const main = document.getElementById("main");
const SEVERITIES = ["CRITICAL", "ERROR", "WARNING", "INFO"];

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function ago(stamp) {
  if (!stamp) return "never";
  const s = Math.max(0, (Date.now() - Date.parse(stamp)) / 1000);
  if (s < 60) return `${Math.round(s)}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

function when(stamp) {
  return stamp ? h("span", { title: stamp }, ago(stamp)) : "-";
}

function toast(text, bad) {
  const el = document.getElementById("toast");
  el.textContent = text;
  el.className = bad ? "show bad" : "show";
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.className = ""; }, 4000);
}

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin" });
  if (response.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname); return null; }
  if (!response.ok) throw new Error((await response.json()).error || response.statusText);
  return response.json();
}

async function act(url, payload) {
  const response = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": CSRF },
    body: JSON.stringify(payload),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) { toast(`Refused: ${answer.error || response.status}`, true); return null; }
  return answer;
}

function query() { return new URLSearchParams(location.search); }

// What an operator types survives the live re-renders: each form field is a draft kept by key,
// and the field that had the focus gets it back.
const drafts = new Map();
function draft(key, el) {
  el.dataset.draft = key;
  if (drafts.has(key)) el.value = drafts.get(key);
  el.addEventListener("input", () => drafts.set(key, el.value));
  return el;
}

function rendered(focused) {
  if (!focused) return;
  const el = main.querySelector(`[data-draft="${CSS.escape(focused)}"]`);
  if (el) { el.focus(); el.setSelectionRange?.(el.value.length, el.value.length); }
}

function sevBadges(firing) {
  return SEVERITIES.filter((s) => firing[s]).map((s) => h("span", { class: `sev sev-${s}`, title: s }, `${s[0]} ${firing[s]}`));
}

function chainText(chain) {
  if (!chain) return "no chain";
  const mark = chain.verified === true ? "✓" : chain.verified === false ? "✗ BAD" : "?";
  return `#${chain.seq} ${(chain.hash || "").slice(0, 10)} ${mark}`;
}

function tile(d, compact) {
  return h("a", { class: `tile s-${d.state}`, href: `/device/${encodeURIComponent(d.device)}`, dataset: { device: d.device, state: d.state } },
    h("div", { class: "name" }, h("span", {}, d.device), d.revoked ? h("span", { class: "state s-offline", title: `certificate revoked ${d.revoked}` }, "revoked") : null,
      compact ? null : h("span", { class: `state s-${d.state}` }, d.state)),
    compact ? h("div", { class: "row" }, h("span", {}, sevBadges(d.firing))) : [
      h("div", { class: "row" }, h("span", {}, `link ${d.link}`), h("span", {}, `nodes ${d.nodes_online}/${d.nodes_total}`)),
      h("div", { class: "row" }, h("span", {}, sevBadges(d.firing).length ? sevBadges(d.firing) : "no alerts"), h("span", { class: "mono" }, chainText(d.chain))),
      h("div", { class: "row" }, h("span", {}, "seen ", when(d.last_seen)), h("span", {}, d.version || "")),
      d.site || d.tags.length ? h("div", { class: "row" }, h("span", {}, d.site), h("span", {}, d.tags.join(" "))) : null,
    ]);
}

function select(name, options, current, onchange) {
  return h("select", { name, onchange },
    options.map(([value, label]) => h("option", { value, selected: value === current }, label)));
}

function setQuery(key, value) {
  const q = query();
  if (value) q.set(key, value); else q.delete(key);
  history.replaceState(null, "", `${location.pathname}${q.toString() ? "?" + q : ""}`);
  refresh();
}

// ---------------------------------------------------------------- the grid's model
// The grid is read whole once (and on a resync); after that the live stream names the devices that
// changed and only their tiles are re-read (/api/fleet?devices=a,b), so a page costs the console a
// few reads per change, not the whole fleet's. Filter, group and sort happen here.
const STATES = ["offline", "stale", "critical", "error", "degraded", "warning", "ok", "unknown"];
const fleet = { tiles: new Map(), sites: [], tags: [], loaded: false };
const dirty = new Set();
const MAX_TILES = 200;

async function loadFleet() {
  if (fleet.loaded && dirty.size && dirty.size <= MAX_TILES) {
    const names = [...dirty];
    dirty.clear();
    const data = await getJSON(`/api/fleet?devices=${names.map(encodeURIComponent).join(",")}`);
    if (!data) return false;
    const found = new Map(data.groups.flatMap((g) => g.devices).map((d) => [d.device, d]));
    for (const name of names) {
      if (found.has(name)) fleet.tiles.set(name, found.get(name)); else fleet.tiles.delete(name);
    }
    return true;
  }
  if (fleet.loaded && !dirty.size) return true;
  dirty.clear();
  const data = await getJSON("/api/fleet");
  if (!data) return false;
  fleet.tiles = new Map(data.groups.flatMap((g) => g.devices).map((d) => [d.device, d]));
  fleet.sites = data.sites;
  fleet.tags = data.tags;
  fleet.loaded = true;
  return true;
}

function worstFirst(a, b) {
  const byState = STATES.indexOf(a.state) - STATES.indexOf(b.state);
  if (byState) return byState;
  for (const s of SEVERITIES) {
    const bySeverity = (b.firing[s] || 0) - (a.firing[s] || 0);
    if (bySeverity) return bySeverity;
  }
  return a.device < b.device ? -1 : a.device > b.device ? 1 : 0;
}

function fleetView(q) {
  const tiles = [...fleet.tiles.values()]
    .filter((d) => (!q.get("site") || d.site === q.get("site")) && (!q.get("tag") || d.tags.includes(q.get("tag"))))
    .sort(worstFirst);
  const totals = {};
  for (const d of tiles) totals[d.state] = (totals[d.state] || 0) + 1;
  const groups = new Map();
  for (const d of tiles) {
    const keys = q.get("group") === "site" ? [d.site] : q.get("group") === "tag" ? d.tags : [""];
    for (const key of keys.length ? keys : [""]) {
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(d);
    }
  }
  return { tiles, totals, groups };
}

function totalsBar(totals) {
  return STATES.filter((s) => totals[s]).map((s) => h("span", {}, h("span", { class: `state s-${s}` }, s), ` ${totals[s]}`));
}

// ---------------------------------------------------------------- pages
const pages = {
  async fleet() {
    const q = query();
    if (!(await loadFleet())) return;
    const view = fleetView(q);
    const bar = h("div", { class: "bar" },
      h("label", {}, "Group by ", select("group", [["", "nothing"], ["site", "site"], ["tag", "tag"]], q.get("group") || "", (e) => setQuery("group", e.target.value))),
      h("label", {}, "Site ", select("site", [["", "any"], ...fleet.sites.map((s) => [s, s])], q.get("site") || "", (e) => setQuery("site", e.target.value))),
      h("label", {}, "Tag ", select("tag", [["", "any"], ...fleet.tags.map((t) => [t, t])], q.get("tag") || "", (e) => setQuery("tag", e.target.value))),
      h("div", { class: "totals" }, totalsBar(view.totals)));
    const groups = [...view.groups].map(([name, devices]) => h("section", {}, name ? h("h2", {}, name) : null, h("div", { class: "grid" }, devices.map((d) => tile(d, false)))));
    main.replaceChildren(h("h1", {}, "Fleet"), bar, ...(groups.length ? groups : [h("p", { class: "muted" }, "No device yet.")]));
  },

  async wall() {
    if (!(await loadFleet())) return;
    const view = fleetView(query());
    const head = h("div", { class: "wall-head" }, totalsBar(view.totals), h("span", { class: "muted" }, new Date().toLocaleTimeString()));
    main.replaceChildren(head, h("div", { class: "wall" }, view.tiles.map((d) => tile(d, true))));
  },

  async alerts() {
    const q = query();
    if (!q.has("status")) q.set("status", "firing");
    const data = await getJSON(`/api/alerts?${q}`);
    if (!data) return;
    const filters = h("form", { class: "bar", method: "get", action: "/alerts" },
      h("label", {}, "Group by ", select("group", [["severity", "severity"], ["device", "device"], ["component", "component"]], q.get("group") || "severity")),
      h("label", {}, "Severity ", select("severity", [["", "any"], ...SEVERITIES.map((s) => [s, s])], q.get("severity") || "")),
      h("label", {}, "Device ", h("input", { name: "device", value: q.get("device") || "", size: 12 })),
      h("label", {}, "Component ", h("input", { name: "component", value: q.get("component") || "", size: 10 })),
      h("label", {}, "Status ", select("status", [["firing", "firing"], ["resolved", "resolved"], ["all", "all"]], q.get("status"))),
      h("label", {}, "Muted ", select("muted", [["", "show"], ["hide", "hide"]], q.get("muted") || "")),
      h("button", { type: "submit" }, "Filter"));
    const groups = data.groups.map((g) => h("details", { class: "group", open: true },
      h("summary", {}, g.name, h("small", {}, ` ${g.count} alert${g.count === 1 ? "" : "s"}, ${g.events} event${g.events === 1 ? "" : "s"}`)),
      alertTable(g.alerts)));
    main.replaceChildren(h("h1", {}, "Alerts"), filters,
      ...(groups.length ? groups : [h("p", { class: "muted", id: "no-alerts" }, "No alert matches.")]),
      ...[silencesCard(data.silences), OPERATOR ? silenceForm(q) : null].filter(Boolean));
  },

  async device() {
    const d = await getJSON(`/api/device/${encodeURIComponent(ARG)}`);
    if (!d) return;
    const info = h("div", { class: "card" }, h("dl", {},
      h("dt", {}, "State"), h("dd", {}, h("span", { class: `state s-${d.state}`, id: "device-state" }, d.state)),
      h("dt", {}, "Link"), h("dd", {}, `${d.link} (changed `, when(d.link_changed), ")"),
      h("dt", {}, "Last seen"), h("dd", {}, when(d.last_seen)),
      h("dt", {}, "Health"), h("dd", {}, d.stale ? "stale since " : "newest ", when(d.health_at)),
      h("dt", {}, "Version"), h("dd", {}, d.version || "-"),
      h("dt", {}, "Site / tags"), h("dd", {}, `${d.site || "-"} / ${d.tags.join(", ") || "-"}`, d.enrolled ? "" : " (not enrolled)", d.revoked ? ` (certificate revoked ${d.revoked})` : ""),
      h("dt", {}, "Chain head"), h("dd", { class: "mono" }, chainText(d.chain), d.chain ? ` (witnessed from seq ${d.chain.base})` : ""),
      h("dt", {}, "Signing keys"), h("dd", { class: "mono" }, d.keys.join(", ") || "-"),
      Object.keys(d.disk).length ? [h("dt", {}, "Disk"), h("dd", {}, h("pre", {}, JSON.stringify(d.disk, null, 1)))] : null));
    const nodes = h("table", {}, h("tr", {}, ["Node", "Status", "Beat", "Interval", "Version", "Details"].map((t) => h("th", {}, t))),
      d.nodes.map((n) => h("tr", {}, h("td", {}, n.node), h("td", {}, h("span", { class: `state s-${n.status === "online" ? "ok" : n.status === "offline" ? "offline" : "degraded"}` }, n.status)),
        h("td", {}, when(n.seen)), h("td", {}, n.interval_s ? `${n.interval_s}s` : "-"), h("td", {}, n.version),
        h("td", {}, h("details", {}, h("summary", {}, "details"), h("pre", {}, JSON.stringify(n.details, null, 1)))))));
    const lines = h("table", {}, h("tr", {}, ["Seq", "Video", "Summary", "Counts", "Signature", "Received"].map((t) => h("th", {}, t))),
      d.loglines.map((l) => h("tr", {}, h("td", {}, l.seq), h("td", { class: "mono" }, l.video_id), h("td", {}, l.text),
        h("td", {}, Object.entries(l.counts || {}).map(([k, v]) => `${k} ${v}`).join(", ")),
        h("td", {}, l.verified === true ? "verified" : l.verified === false ? "BAD" : "unchecked"), h("td", {}, when(l.at)))));
    main.replaceChildren(h("h1", {}, d.device), info, ...(OPERATOR ? [commandBar(d.device)] : []), h("h2", {}, "Nodes"), nodes, h("h2", {}, "Alerts"), alertTable(d.alerts),
      h("h2", {}, "Recent LogLines"), d.loglines.length ? lines : h("p", { class: "muted" }, "None since the console started."));
  },

  async history() {
    const q = query();
    const rows = await getJSON(`/api/history?${q}`);
    if (!rows) return;
    const filters = h("form", { class: "bar", method: "get", action: "/history" },
      h("label", {}, "Since ", h("input", { name: "since", value: q.get("since") || "", placeholder: "1d or RFC 3339", size: 14 })),
      h("label", {}, "Until ", h("input", { name: "until", value: q.get("until") || "", placeholder: "now", size: 14 })),
      h("label", {}, "Device ", h("input", { name: "device", value: q.get("device") || "", size: 12 })),
      h("label", {}, "Kind ", select("kind", [["", "any"], ["alert", "alert"], ["device", "device"]], q.get("kind") || "")),
      h("button", { type: "submit" }, "Filter"),
      h("a", { href: `/api/history?${withParam(q, "format", "csv")}`, id: "export-csv" }, "Export CSV"),
      h("a", { href: `/api/history?${withParam(q, "format", "json")}`, id: "export-json" }, "Export JSON"));
    const table = h("table", {}, h("tr", {}, ["Time", "Device", "Change", "Severity", "What", "Detail"].map((t) => h("th", {}, t))),
      rows.map((r) => h("tr", {}, h("td", { title: r.at }, r.at), h("td", {}, h("a", { href: `/device/${encodeURIComponent(r.device)}` }, r.device)),
        h("td", {}, r.change), h("td", {}, h("span", { class: `sev sev-${r.severity}` }, r.severity)), h("td", {}, r.title), h("td", { class: "mono" }, r.detail))));
    main.replaceChildren(h("h1", {}, "History"), filters, rows.length ? table : h("p", { class: "muted" }, "Nothing in that window."));
  },
};

function withParam(q, key, value) {
  const copy = new URLSearchParams(q);
  copy.set(key, value);
  return copy.toString();
}

function mutedText(muted) {
  return muted.map((m) => m.why === "ack" ? `acked by ${m.by}` : m.why === "silence" ? `silenced by ${m.by} until ${m.until}${m.comment ? ` (${m.comment})` : ""}` : `${m.why}: ${m.detail}`).join("; ");
}

function alertTable(alerts) {
  if (!alerts.length) return h("p", { class: "muted" }, "No alerts.");
  return h("table", { class: "alerts" },
    h("tr", {}, ["Severity", "Device", "Component", "Title", "Count", "First seen", "Last seen", "Muted", ""].map((t) => h("th", {}, t))),
    alerts.map((a) => h("tr", { class: a.status, dataset: { ref: a.ref } },
      h("td", {}, h("span", { class: `sev sev-${a.severity}` }, a.severity), a.status === "resolved" ? h("small", {}, " resolved") : null),
      h("td", {}, h("a", { href: `/device/${encodeURIComponent(a.device)}` }, a.device)),
      h("td", {}, a.component),
      h("td", { title: a.details }, a.title),
      h("td", {}, a.count),
      h("td", {}, when(a.first_seen)),
      h("td", {}, when(a.last_seen)),
      h("td", { class: "muted-why" }, mutedText(a.muted)),
      h("td", { class: "actions" }, OPERATOR && a.status === "firing" && !a.muted.some((m) => m.why === "ack") ? ackForm(a) : null))));
}

function ackForm(alert) {
  const key = `ack:${alert.ref}`;
  const comment = draft(key, h("input", { name: "comment", placeholder: "comment", "aria-label": `comment for ${alert.ref}` }));
  return h("form", { class: "inline ack", onsubmit: async (e) => {
    e.preventDefault();
    const answer = await act("/api/ack", { device: alert.device, dedup_key: alert.dedup_key, comment: drafts.get(key) ?? comment.value });
    if (answer) { drafts.delete(key); toast(`Ack sent as ${answer.author} (action ${answer.action})`); refresh(); }
  } }, comment, h("button", { type: "submit" }, "Ack"));
}

function commandBar(device) {
  const send = (kind, label) => h("button", { type: "button", dataset: { command: kind }, onclick: async () => {
    const answer = await act("/api/command", { device, kind });
    if (answer) toast(`${label}: sent as ${answer.author} (action ${answer.action})`);
  } }, label);
  return h("div", { class: "bar" }, h("span", { class: "muted" }, "Send to the device:"),
    send("cmd.alerter.resync", "Resync alerts"), send("cmd.ingest.pause", "Pause ingest"), send("cmd.ingest.resume", "Resume ingest"));
}

function silencesCard(silences) {
  if (!silences.length) return null;
  return h("div", { class: "card" }, h("h2", {}, "Active silences"), h("table", {},
    h("tr", {}, ["Device", "Matcher", "Until", "By", "Comment"].map((t) => h("th", {}, t))),
    silences.map((s) => h("tr", {}, h("td", {}, s.device), h("td", { class: "mono" }, Object.entries(s.matcher).map(([k, v]) => `${k}=${v}`).join(" ")),
      h("td", {}, s.until), h("td", {}, s.by), h("td", {}, s.comment)))));
}

function silenceForm(q) {
  const matchers = h("textarea", { name: "matchers", rows: 2, cols: 40, placeholder: "title=Disk almost full\ndevice=cam-gw-01" });
  if (q.get("device")) matchers.value = `device=${q.get("device")}\n`;
  draft("silence:matchers", matchers);
  const duration = draft("silence:duration", h("input", { name: "duration", value: "2h", size: 6 }));
  const comment = draft("silence:comment", h("input", { name: "comment", placeholder: "why (required)", size: 30 }));
  return h("form", { class: "card silence", onsubmit: async (e) => {
    e.preventDefault();
    const answer = await act("/api/silence", { matchers: matchers.value.split(/\s*\n\s*/).filter(Boolean), duration: duration.value, comment: comment.value });
    if (answer) {
      for (const key of ["silence:matchers", "silence:duration", "silence:comment"]) drafts.delete(key);
      toast(`Silence sent as ${answer.author} (actions ${answer.actions.join(", ")})`);
      refresh();
    }
  } }, h("h2", {}, "New silence"),
    h("div", { class: "bar" }, h("label", {}, "Matchers (KEY=VALUE per line; title, source_component, dedup_key; device= targets) ", matchers)),
    h("div", { class: "bar" }, h("label", {}, "For ", duration), h("label", {}, "Comment ", comment),
      h("span", { class: "muted" }, `author: ${body.dataset.user}`), h("button", { type: "submit" }, "Silence")));
}

// ---------------------------------------------------------------- refresh, live stream, notifications
let refreshing = null;
let again = false;

async function refresh() {
  if (refreshing) { again = true; return; }
  refreshing = (async () => {
    const focused = document.activeElement?.dataset?.draft;
    try { await pages[PAGE](); rendered(focused); } catch (err) { toast(String(err.message || err), true); }
  })();
  await refreshing;
  refreshing = null;
  if (again) { again = false; refresh(); }
}

let pending = null;
function soon() {
  if (pending) return;
  pending = setTimeout(() => { pending = null; refresh(); }, 100);
}

// A device's link and staleness as last streamed: the alerts and history pages re-read only when
// they change (a health beat changes neither), the grid re-reads only the tiles named.
const links = new Map();
function linkChanged(change) {
  const now = `${change.link}/${change.stale}`;
  const before = links.get(change.device);
  links.set(change.device, now);
  return before === undefined ? change.link === "down" || change.stale : before !== now;
}

function relevant(kind, change) {
  if (kind === "resync") { fleet.loaded = false; dirty.clear(); return true; }
  if (kind === "device" && linkChanged(change) && PAGE !== "fleet" && PAGE !== "wall") return PAGE !== "device" || change.device === ARG;
  if (PAGE === "device") return change.device === ARG;
  if (PAGE === "fleet" || PAGE === "wall") {
    if (kind === "logline") return false;
    dirty.add(change.device);
    return true;
  }
  return kind === "alert";
}

const NOTIFY_KEY = "vv-console-notify";
const notified = new Set();

function notifyButton() {
  const button = document.getElementById("notify");
  const on = localStorage.getItem(NOTIFY_KEY) === "on" && "Notification" in window && Notification.permission === "granted";
  button.textContent = `Notify: ${on ? "CRITICAL" : "off"}`;
  return on;
}

document.getElementById("notify").addEventListener("click", async () => {
  if (!("Notification" in window)) { toast("This browser has no notifications", true); return; }
  if (localStorage.getItem(NOTIFY_KEY) === "on") localStorage.removeItem(NOTIFY_KEY);
  else if ((await Notification.requestPermission()) === "granted") localStorage.setItem(NOTIFY_KEY, "on");
  notifyButton();
});

function maybeNotify(change) {
  const id = `${change.device}/${change.key}`;
  if (change.status !== "firing") { notified.delete(id); return; }
  if (change.severity !== "CRITICAL" || notified.has(id)) return;
  notified.add(id);
  if (notifyButton()) new Notification(`CRITICAL on ${change.device}`, { body: change.title, tag: id });
}

function live() {
  const badge = document.getElementById("live");
  const source = new EventSource("/api/events");
  source.onopen = () => { // changes before the stream (re)opened are not on it: read everything once
    badge.textContent = "live";
    badge.className = "live on";
    fleet.loaded = false;
    dirty.clear();
    soon();
  };
  source.onerror = () => { badge.textContent = "reconnecting"; badge.className = "live off"; };
  for (const kind of ["device", "alert", "logline", "resync"]) {
    source.addEventListener(kind, (e) => {
      const change = JSON.parse(e.data);
      if (kind === "alert") maybeNotify(change);
      if (relevant(kind, change)) soon();
    });
  }
}

for (const link of document.querySelectorAll("[data-nav]")) {
  if (link.dataset.nav === PAGE) link.classList.add("current");
}
notifyButton();
refresh();
live();
if (PAGE === "wall" || PAGE === "fleet") setInterval(soon, 30000); // "seen 12s ago" keeps counting
if (PAGE === "device") setInterval(soon, 10000); // health details: a beat that changes no state is not streamed
