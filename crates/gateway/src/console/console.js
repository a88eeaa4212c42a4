// The Perennial console: a page over the node's admin API. No framework, no build step:
// each view is a function that fetches what it shows and renders it into <main>. The admin
// token is kept in this tab's session storage and sent as a bearer token.
"use strict";

const view = document.getElementById("view");
const tokenInput = document.getElementById("token");

function token() {
  return sessionStorage.getItem("perennial-admin-token") || "";
}

/** Calls the admin API; resolves with the JSON answer, rejects with the error's message. */
async function api(method, path, body) {
  const headers = { authorization: "Bearer " + token() };
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let value = null;
  try {
    value = text ? JSON.parse(text) : null;
  } catch (_) {
    value = { error: { code: "bad_answer", message: text } };
  }
  if (!response.ok) {
    const error = (value && value.error) || { code: String(response.status), message: text };
    const e = new Error(error.message);
    e.code = error.code;
    e.status = response.status;
    throw e;
  }
  return value;
}

/** Makes an element: el("td", {class: "x"}, "text", child, …). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function table(headers, rows) {
  return el(
    "table",
    {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c))))),
  );
}

function pretty(value) {
  return el("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

function link(href, text) {
  return el("a", { href }, text);
}

function entityHref(kind, id) {
  return "#/entity/" + encodeURIComponent(kind) + "/" + encodeURIComponent(id);
}

function say(text) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.classList.add("shown");
  clearTimeout(say.timer);
  say.timer = setTimeout(() => status.classList.remove("shown"), 2500);
}

function show(...nodes) {
  view.replaceChildren(...nodes);
}

function failure(error) {
  if (error.status === 401 || error.status === 403) {
    return el("p", { class: "error" }, "Sign in with the node's admin token (", error.message, ").");
  }
  return el("p", { class: "error" }, error.code ? error.code + ": " : "", error.message);
}

// ---- views ----

async function kindsView() {
  const { kinds } = await api("GET", "/v1/admin/kinds");
  const rows = kinds.map((k) => [
    link("#/kind/" + encodeURIComponent(k.kind), k.kind),
    k.persistence,
    el("span", { "data-stored": k.kind }, k.stored),
    k.resident,
    k.activations,
    k.passivations,
    k.restarts,
    k.dead_letters,
  ]);
  return [
    el("h1", {}, "Kinds"),
    table(["kind", "persistence", "stored", "resident", "activations", "passivations", "restarts", "dead letters"], rows),
  ];
}

async function kindView(kind, filter) {
  const search = el("input", {
    type: "text",
    id: "filter",
    placeholder: "a filter, such as value > 100",
    size: "40",
    value: filter || "",
  });
  const form = el(
    "form",
    {
      class: "row",
      onsubmit: (event) => {
        event.preventDefault();
        const f = search.value.trim();
        location.hash = "#/kind/" + encodeURIComponent(kind) + (f ? "?filter=" + encodeURIComponent(f) : "");
      },
    },
    search,
    el("button", { type: "submit" }, "Find"),
  );
  let body;
  if (filter) {
    const found = await api("GET", "/v1/admin/kinds/" + encodeURIComponent(kind) + "/query?limit=100&filter=" + encodeURIComponent(filter));
    body = table(
      ["id", "version", "state"],
      found.entities.map((e) => [link(entityHref(kind, e.id), e.id), e.version, JSON.stringify(e.state)]),
    );
  } else {
    const listed = await api("GET", "/v1/admin/kinds/" + encodeURIComponent(kind) + "/entities?limit=200");
    body = table(
      ["id", "resident", "paused", "state version", "schema", "last step"],
      listed.entities.map((e) => [
        link(entityHref(kind, e.id), e.id),
        e.resident ? "yes" : "",
        e.paused ? "paused" : "",
        e.state_version,
        e.schema,
        e.last_step,
      ]),
    );
  }
  return [el("h1", {}, "Kind ", kind), form, body];
}

async function entityView(kind, id) {
  const base = "/v1/admin/entities/" + encodeURIComponent(kind) + "/" + encodeURIComponent(id);
  const title = el("h1", {}, kind, "/", id);
  const act = (what) =>
    el(
      "button",
      {
        class: "plain",
        id: what,
        onclick: async () => {
          try {
            const answer = await api("POST", base + "/" + what);
            say(what + ": " + JSON.stringify(answer));
            route();
          } catch (e) {
            say(what + " failed: " + e.message);
          }
        },
      },
      what,
    );
  // Deleting asks first: it cannot be undone. A busy entity (messages on their way) is
  // refused with 409 busy; the operator may then force it.
  const remove = el(
    "button",
    {
      class: "plain",
      id: "delete",
      onclick: async () => {
        if (!confirm("Delete " + kind + "/" + id + "? Its state, journal, timers and asks go for good.")) return;
        try {
          await api("DELETE", base);
        } catch (e) {
          if (e.code !== "busy" || !confirm(e.message + "\nDelete it anyway?")) {
            say("delete failed: " + e.message);
            return;
          }
          try {
            await api("DELETE", base + "?force=true");
          } catch (again) {
            say("delete failed: " + again.message);
            return;
          }
        }
        say("deleted " + kind + "/" + id);
        route();
      },
    },
    "delete",
  );
  const actions = el("div", { class: "row" }, act("pause"), act("resume"), act("passivate"), remove);
  const nodes = [title, actions];
  try {
    const current = await api("GET", base);
    nodes.push(el("h2", {}, "State"), el("div", { id: "state" }, pretty(current.state)));
  } catch (e) {
    nodes.push(el("h2", {}, "State"), failure(e));
  }
  try {
    const { pending } = await api("GET", base + "/pending");
    nodes.push(
      el("h2", {}, "Pending timers, messages and effects"),
      pending.length
        ? table(
            ["seq", "class", "due", "to", "body", "failed attempts"],
            pending.map((p) => [
              p.seq,
              p.class,
              new Date(p.due_ms).toISOString(),
              p.target.kind + "/" + p.target.id,
              JSON.stringify(p.body),
              p.failed_attempts ? p.failed_attempts + ": " + p.last_error : "",
            ]),
          )
        : el("p", { class: "muted", id: "no-pending" }, "None."),
    );
  } catch (e) {
    if (e.code !== "not_stored") nodes.push(failure(e));
  }
  try {
    const { history } = await api("GET", base + "/history?limit=1000");
    if (history.length > 0) nodes.push(timeline(base, history));
  } catch (e) {
    if (e.code !== "no_history") nodes.push(failure(e));
  }
  return nodes;
}

/** The journal as a list, with a slider for the state after any of its steps. */
function timeline(base, history) {
  const first = history[0].step;
  const last = history[history.length - 1].step;
  const slider = el("input", { type: "range", id: "step", min: first, max: last, value: last, step: 1 });
  const label = el("span", { id: "step-label" }, "step " + last);
  const past = el("div", { id: "past" }, el("p", { class: "muted" }, "Move the slider to see the state after a step."));
  const steps = table(
    ["step", "at", "message"],
    history.map((h) => [h.step, new Date(h.at_us / 1000).toISOString(), JSON.stringify(h.message)]),
  );
  let request = 0;
  slider.addEventListener("input", async () => {
    const step = slider.value;
    label.textContent = "step " + step;
    const mine = ++request;
    try {
      const answer = await api("GET", base + "/at/" + step);
      if (mine === request) past.replaceChildren(pretty(answer.state));
    } catch (e) {
      if (mine === request) past.replaceChildren(failure(e));
    }
  });
  return el(
    "section",
    {},
    el("h2", {}, "History"),
    el("div", { class: "row" }, slider, label),
    el("div", { class: "timeline" }, steps, past),
  );
}

async function deadLettersView() {
  const { dead_letters: letters } = await api("GET", "/v1/admin/dead-letters");
  const button = (seq, what) =>
    el(
      "button",
      {
        class: "plain",
        "data-seq": seq,
        "data-action": what,
        onclick: async () => {
          try {
            const answer = await api("POST", "/v1/admin/dead-letters/" + seq + "/" + what);
            say(what + " " + seq + ": " + JSON.stringify(answer));
          } catch (e) {
            say(what + " " + seq + " failed: " + e.message);
          }
          route();
        },
      },
      what,
    );
  const rows = letters.map((l) => [
    l.seq,
    link(entityHref(l.kind, l.id), l.kind + "/" + l.id),
    JSON.stringify(l.message),
    l.error,
    l.attempts,
    el("span", {}, button(l.seq, "retry"), " ", button(l.seq, "discard")),
  ]);
  return [
    el("h1", {}, "Dead letters"),
    rows.length ? table(["seq", "entity", "message", "error", "attempts", ""], rows) : el("p", { class: "muted" }, "No dead letters."),
  ];
}

async function quarantinedView() {
  const { quarantined } = await api("GET", "/v1/admin/quarantined");
  const rows = quarantined.map((q) => [link(entityHref(q.kind, q.id), q.kind + "/" + q.id), q.code, q.reason]);
  return [
    el("h1", {}, "Quarantined entities"),
    rows.length ? table(["entity", "code", "reason"], rows) : el("p", { class: "muted" }, "None."),
  ];
}

/** Parses the Prometheus text format: [{name, labels, value}]. */
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = line.match(/^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[2] || "").slice(1, -1).matchAll(/(\w+)="([^"]*)"/g)) labels[pair[1]] = pair[2];
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

function total(samples, name, where) {
  return samples
    .filter((s) => s.name === name && (!where || where(s.labels)))
    .reduce((sum, s) => sum + s.value, 0);
}

/** The 99th percentile of the calls between two scrapes, from their histogram buckets. */
function p99(before, after) {
  const buckets = new Map();
  for (const s of after) if (s.name === "perennial_call_seconds_bucket") buckets.set(s.labels.le, (buckets.get(s.labels.le) || 0) + s.value);
  for (const s of before) if (s.name === "perennial_call_seconds_bucket") buckets.set(s.labels.le, (buckets.get(s.labels.le) || 0) - s.value);
  const sorted = [...buckets.entries()].map(([le, n]) => [le === "+Inf" ? Infinity : Number(le), n]).sort((a, b) => a[0] - b[0]);
  const count = sorted.length ? sorted[sorted.length - 1][1] : 0;
  if (count <= 0) return 0;
  const found = sorted.find(([, n]) => n >= 0.99 * count);
  return found && Number.isFinite(found[0]) ? found[0] * 1000 : 0;
}

/** A small line chart of the last values of one series. */
function chart(id, title, unit) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 300 60");
  svg.setAttribute("class", "chart");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  svg.append(line);
  const value = el("b", { class: "value" }, "…");
  const box = el("div", { class: "card-box", id }, el("div", {}, title, " ", value, " ", el("span", { class: "muted" }, unit)), svg);
  const points = [];
  box.push = (v) => {
    points.push(v);
    if (points.length > 60) points.shift();
    const max = Math.max(...points, 1e-9);
    line.setAttribute("points", points.map((p, i) => `${(i * 300) / 59},${58 - (p / max) * 54}`).join(" "));
    value.textContent = Number.isInteger(v) || v >= 100 ? v.toFixed(0) : v.toFixed(2);
  };
  return box;
}

async function liveView() {
  const charts = [
    chart("calls", "calls/s", ""),
    chart("p99", "p99 latency", "ms"),
    chart("batch", "commit batch", "steps"),
    chart("fsync", "commit to durable", "ms"),
    chart("resident", "resident entities", ""),
  ];
  show(el("h1", {}, "Live"), el("p", { class: "muted" }, "From /metrics, every second."), el("div", { class: "charts" }, charts));
  const scrape = async () => {
    const response = await fetch("/metrics", { headers: { authorization: "Bearer " + token() } });
    if (!response.ok) throw new Error("/metrics answered " + response.status);
    return { at: performance.now(), samples: parseMetrics(await response.text()) };
  };
  let last = await scrape();
  const shown = view.firstChild;
  while (view.firstChild === shown) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    if (view.firstChild !== shown) break;
    const now = await scrape();
    const seconds = (now.at - last.at) / 1000;
    const delta = (name) => total(now.samples, name) - total(last.samples, name);
    const [calls, steps, commits, durable] = [
      delta("perennial_call_seconds_count"),
      delta("perennial_commit_steps_sum"),
      delta("perennial_commit_steps_count"),
      delta("perennial_commit_durable_seconds_sum"),
    ];
    charts[0].push(calls / seconds);
    charts[1].push(p99(last.samples, now.samples));
    charts[2].push(commits > 0 ? steps / commits : 0);
    charts[3].push(commits > 0 ? (durable / commits) * 1000 : 0);
    charts[4].push(total(now.samples, "perennial_resident_entities"));
    last = now;
  }
}

async function clusterView() {
  const cluster = await api("GET", "/v1/admin/cluster");
  const nodes = [el("h1", {}, "Cluster"), el("p", {}, "This node: ", cluster.node || "single node", ", serving ", el("b", { id: "served" }, cluster.served_shards), " shards.")];
  if (cluster.members.length) {
    nodes.push(table(["node", "address", "shards"], cluster.members.map((m) => [m.node, m.address, m.shards])));
  }
  return nodes;
}

// ---- routing ----

// Counts navigations: a view that finishes after a later one started is not shown, so a slow
// page cannot land over the page the operator went to since.
let navigation = 0;

async function route() {
  const mine = ++navigation;
  const hash = location.hash || "#/";
  const [path, query] = hash.slice(1).split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query || "");
  document.getElementById("who").textContent = token() ? "signed in" : "";
  let nodes;
  try {
    if (parts.length === 0) nodes = await kindsView();
    else if (parts[0] === "kind" && parts.length === 2) nodes = await kindView(parts[1], params.get("filter"));
    else if (parts[0] === "entity" && parts.length === 3) nodes = await entityView(parts[1], parts[2]);
    else if (parts[0] === "dead-letters") nodes = await deadLettersView();
    else if (parts[0] === "quarantined") nodes = await quarantinedView();
    else if (parts[0] === "cluster") nodes = await clusterView();
    // The live view draws at once and keeps drawing while it is shown.
    else if (parts[0] === "live") return await liveView();
    else nodes = [el("p", { class: "error" }, "No such page.")];
  } catch (e) {
    nodes = [failure(e)];
  }
  if (mine === navigation) show(...nodes);
}

document.getElementById("signin").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("perennial-admin-token", tokenInput.value);
  tokenInput.value = "";
  route();
});
window.addEventListener("hashchange", route);
route();
