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
    k.resident,
    k.activations,
    k.passivations,
    k.restarts,
    k.dead_letters,
  ]);
  show(
    el("h1", {}, "Kinds"),
    table(["kind", "persistence", "resident", "activations", "passivations", "restarts", "dead letters"], rows),
  );
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
  show(el("h1", {}, "Kind ", kind), form, body);
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
  const actions = el("div", { class: "row" }, act("pause"), act("resume"), act("passivate"));
  const nodes = [title, actions];
  try {
    const current = await api("GET", base);
    nodes.push(el("h2", {}, "State"), el("div", { id: "state" }, pretty(current.state)));
  } catch (e) {
    nodes.push(el("h2", {}, "State"), failure(e));
  }
  try {
    const { history } = await api("GET", base + "/history?limit=1000");
    if (history.length > 0) nodes.push(timeline(base, history));
  } catch (e) {
    if (e.code !== "no_history") nodes.push(failure(e));
  }
  show(...nodes);
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
  show(
    el("h1", {}, "Dead letters"),
    rows.length ? table(["seq", "entity", "message", "error", "attempts", ""], rows) : el("p", { class: "muted" }, "No dead letters."),
  );
}

async function quarantinedView() {
  const { quarantined } = await api("GET", "/v1/admin/quarantined");
  const rows = quarantined.map((q) => [link(entityHref(q.kind, q.id), q.kind + "/" + q.id), q.code, q.reason]);
  show(
    el("h1", {}, "Quarantined entities"),
    rows.length ? table(["entity", "code", "reason"], rows) : el("p", { class: "muted" }, "None."),
  );
}

// ---- routing ----

async function route() {
  const hash = location.hash || "#/";
  const [path, query] = hash.slice(1).split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query || "");
  document.getElementById("who").textContent = token() ? "signed in" : "";
  try {
    if (parts.length === 0) await kindsView();
    else if (parts[0] === "kind" && parts.length === 2) await kindView(parts[1], params.get("filter"));
    else if (parts[0] === "entity" && parts.length === 3) await entityView(parts[1], parts[2]);
    else if (parts[0] === "dead-letters") await deadLettersView();
    else if (parts[0] === "quarantined") await quarantinedView();
    else show(el("p", { class: "error" }, "No such page."));
  } catch (e) {
    show(failure(e));
  }
}

document.getElementById("signin").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("perennial-admin-token", tokenInput.value);
  tokenInput.value = "";
  route();
});
window.addEventListener("hashchange", route);
route();
