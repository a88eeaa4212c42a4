// A playable table of the demo's `table` kind at /play/{table}?as={name}. It joins with a
// name, shows the table as that player sees it (`{"view_for": …}`), acts with buttons, and
// follows the table live through its watch stream (Server-Sent Events of durable changes):
// each event is only a signal to read the player's view again. The turn timer counts down
// to the deadline the table keeps. If the node goes away, the stream reconnects by itself
// and the page reads the table again: the hand is where it was.
"use strict";

const tableId = decodeURIComponent(location.pathname.split("/").filter(Boolean)[1] || "t1");
const params = new URLSearchParams(location.search);
let me = params.get("as");
let view = null;
const $ = (id) => document.getElementById(id);

// On a node that verifies callers, the page is opened with the player's token
// (`?as=NAME&token=JWT`): calls send it as a bearer token, the watch stream (which a browser
// opens without headers) as `access_token`.
const token = params.get("token");

async function call(msg) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = "Bearer " + token;
  const response = await fetch("/v1/table/" + encodeURIComponent(tableId), {
    method: "POST",
    headers,
    body: JSON.stringify(msg),
  });
  const value = await response.json().catch(() => null);
  if (!response.ok) {
    const error = (value && value.error) || { code: String(response.status), message: "" };
    const e = new Error(error.message);
    e.code = error.code;
    throw e;
  }
  return value;
}

function card(text) {
  const span = document.createElement("span");
  span.className = "card" + (/[hd]$/.test(text) ? " red" : "");
  span.textContent = text.replace(/h$/, "♥").replace(/d$/, "♦").replace(/c$/, "♣").replace(/s$/, "♠");
  span.dataset.card = text;
  return span;
}

function render() {
  if (!view) return;
  $("hand").textContent = view.hand;
  $("street").textContent = view.street;
  $("pot").textContent = view.pot;
  $("board").replaceChildren(...view.board.map(card));
  $("seats").replaceChildren(
    ...view.seats.map((s) => {
      const row = document.createElement("div");
      row.className = "seat" + (view.to_act === s.player ? " to-act" : "");
      row.dataset.player = s.player;
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = s.player + (s.player === me ? " (you)" : "");
      const chips = document.createElement("span");
      chips.textContent = s.chips + " chips";
      const bet = document.createElement("span");
      bet.textContent = s.bet ? "bet " + s.bet : "";
      const status = document.createElement("span");
      status.className = "status";
      status.textContent = s.status;
      row.append(name, chips, bet, status);
      return row;
    }),
  );
  const mine = view.seats.find((s) => s.player === me);
  $("hole").replaceChildren(...(mine ? mine.hole_cards.map(card) : []));
  $("join").hidden = Boolean(mine);
  const legal = view.legal_actions && view.legal_actions.player === me ? view.legal_actions : null;
  $("fold").disabled = !legal;
  $("check").disabled = !legal || !legal.can_check;
  $("call").disabled = !legal || legal.can_check;
  $("call").textContent = legal && !legal.can_check ? "Call " + legal.call_amount : "Call";
  $("raise").disabled = !legal || legal.min_raise_to === null;
  if (legal && legal.min_raise_to !== null) {
    const input = $("raise-to");
    input.min = legal.min_raise_to;
    input.max = legal.max_raise_to;
    if (!input.value || Number(input.value) < legal.min_raise_to) input.value = legal.min_raise_to;
  }
  const seated = view.seats.filter((s) => s.status !== "sitting_out").length;
  $("start").disabled = !mine || view.street !== "waiting" || seated < 2;
  const last = view.last_result;
  $("result").textContent = last
    ? "Hand " + last.hand + ": " + last.pots.map((p) => p.winners.map((w) => w.player + " won " + w.chips).join(", ")).join("; ") +
      (last.ended_on === "showdown" ? " at showdown" : " (ended on the " + last.ended_on + ")")
    : "";
  tick();
}

function tick() {
  const deadline = view && view.turn_deadline_ms;
  if (!deadline || !view.to_act) {
    $("timer").textContent = "";
    return;
  }
  const left = Math.max(0, deadline - Date.now());
  $("timer").textContent = view.to_act + ": " + (left / 1000).toFixed(1) + " s";
}

async function refresh() {
  try {
    view = await call(me ? { view_for: { player: me } } : "view");
    $("error").textContent = "";
    render();
  } catch (e) {
    $("error").textContent = e.message;
  }
}

async function act(msg) {
  try {
    await call(msg);
    $("error").textContent = "";
  } catch (e) {
    $("error").textContent = e.code + ": " + e.message;
  }
  refresh();
}

$("join").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = $("name").value.trim();
  try {
    await call({ join: { player: name, chips: Number($("chips").value) } });
  } catch (e) {
    if (e.code !== "already_seated") {
      $("error").textContent = e.code + ": " + e.message;
      return;
    }
  }
  me = name;
  params.set("as", name);
  history.replaceState(null, "", location.pathname + "?" + params);
  refresh();
});
$("start").addEventListener("click", () => act("start_hand"));
$("fold").addEventListener("click", () => act({ act: { player: me, action: "fold" } }));
$("check").addEventListener("click", () => act({ act: { player: me, action: "check" } }));
$("call").addEventListener("click", () => act({ act: { player: me, action: "call" } }));
$("raise").addEventListener("click", () =>
  act({ act: { player: me, action: { raise: Number($("raise-to").value) } } }),
);

function follow() {
  const query = token ? "?access_token=" + encodeURIComponent(token) : "";
  const stream = new EventSource("/v1/table/" + encodeURIComponent(tableId) + "/watch" + query);
  stream.addEventListener("open", () => {
    $("live").textContent = "live";
    refresh();
  });
  // The table keeps its state from watchers: each event only says it changed.
  stream.addEventListener("changed", refresh);
  stream.addEventListener("state", refresh);
  stream.addEventListener("error", () => {
    $("live").textContent = "reconnecting…";
  });
}

$("table-name").textContent = "table " + tableId;
if (me) $("name").value = me;
setInterval(tick, 100);
refresh();
follow();
