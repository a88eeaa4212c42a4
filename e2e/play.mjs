// The poker page in two headless Chromium contexts, one per player, against a node that
// `crates/node/tests/browser.rs` started. In two phases, with a kill -9 of the node between:
//
//   node e2e/play.mjs BASE_URL before STATE_FILE [SCREENSHOT_DIR]
//     Both join table t1; a hand is dealt; the player to act does nothing and the turn timer
//     folds them. A second hand is played to the flop, and what each player sees is saved.
//   node e2e/play.mjs BASE_URL after STATE_FILE
//     After the restart: both pages show the same hand, cards, board and pot; they play on.

import { readFileSync, writeFileSync } from "node:fs";
import { chromium } from "playwright-core";

const [base, phase, stateFile, shots] = process.argv.slice(2);
if (!base || !["before", "after"].includes(phase) || !stateFile) {
  console.error("usage: node play.mjs BASE_URL before|after STATE_FILE [SCREENSHOT_DIR]");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});

async function configure(ms) {
  const response = await fetch(base + "/v1/table/t1", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ configure: { turn_timeout_ms: ms } }),
  });
  if (!response.ok) throw new Error("configure: " + response.status + " " + (await response.text()));
}

async function open(name, join) {
  const context = await browser.newContext({ viewport: { width: 900, height: 700 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  if (join) {
    await page.goto(base + "/play/t1");
    await page.fill("#name", name);
    await page.click("#join button");
    await page.locator(`.seat[data-player="${name}"]`).waitFor();
  } else {
    await page.goto(base + "/play/t1?as=" + name);
  }
  await page.locator("#live").getByText("live", { exact: true }).waitFor();
  return page;
}

/** What a player's page shows: the hand, their cards, the board, the pot, who acts. */
async function seen(page) {
  return page.evaluate(() => ({
    hand: document.getElementById("hand").textContent,
    hole: [...document.querySelectorAll("#hole .card")].map((c) => c.dataset.card),
    board: [...document.querySelectorAll("#board .card")].map((c) => c.dataset.card),
    pot: document.getElementById("pot").textContent,
    toAct: document.querySelector(".seat.to-act")?.dataset.player || null,
  }));
}

async function toAct(pages) {
  const first = pages.alice;
  await first.locator(".seat.to-act").waitFor();
  return first.locator(".seat.to-act").getAttribute("data-player");
}

const other = (name) => (name === "alice" ? "bob" : "alice");
const check = (ok, what) => {
  if (!ok) throw new Error(what);
};

try {
  if (phase === "before") {
    await configure(5000);
    const pages = { alice: await open("alice", true), bob: await open("bob", true) };
    // Hand 1: dealt; whoever acts first waits, and the turn timer folds them.
    await pages.alice.click("#start");
    for (const name of ["alice", "bob"]) {
      await pages[name].locator("#hole .card").nth(1).waitFor();
    }
    const [a, b] = [await seen(pages.alice), await seen(pages.bob)];
    check(a.hand === "1" && b.hand === "1", `hand ${a.hand}/${b.hand}`);
    check(a.hole.length === 2 && b.hole.length === 2, "two hole cards each");
    check(!a.hole.some((c) => b.hole.includes(c)), "each player sees only their own cards");
    const slow = await toAct(pages);
    await pages[slow].locator("#timer").getByText(new RegExp(`^${slow}: \\d`)).waitFor();
    if (shots) await pages[slow].screenshot({ path: `${shots}/play-timer.png` });
    await pages[slow].locator("#result").getByText(/Hand 1: .* \(ended on the preflop\)/).waitFor({ timeout: 15_000 });
    const result = await pages[slow].locator("#result").innerText();
    check(result.includes(other(slow) + " won"), `the timer folded ${slow}: ${result}`);

    // Hand 2, with time to think, played to the flop.
    await configure(600_000);
    await pages.alice.click("#start");
    await pages.alice.locator("#hand").getByText("2", { exact: true }).waitFor();
    const first = await toAct(pages);
    await pages[first].locator("#call:not([disabled])").click();
    await pages[other(first)].locator("#check:not([disabled])").click();
    for (const name of ["alice", "bob"]) {
      await pages[name].locator("#board .card").nth(2).waitFor();
    }
    const state = { alice: await seen(pages.alice), bob: await seen(pages.bob) };
    check(state.alice.board.length === 3, "the flop is dealt");
    if (shots) {
      await pages.alice.screenshot({ path: `${shots}/play-alice.png` });
      await pages.bob.screenshot({ path: `${shots}/play-bob.png` });
    }
    writeFileSync(stateFile, JSON.stringify(state));
  } else {
    const saved = JSON.parse(readFileSync(stateFile, "utf8"));
    const pages = { alice: await open("alice", false), bob: await open("bob", false) };
    for (const name of ["alice", "bob"]) {
      await pages[name].locator("#board .card").nth(2).waitFor();
      const now = await seen(pages[name]);
      check(JSON.stringify(now) === JSON.stringify(saved[name]),
        `${name} sees ${JSON.stringify(now)} after the restart, not ${JSON.stringify(saved[name])}`);
    }
    // And the hand goes on: both check, the turn card comes.
    const first = await toAct(pages);
    await pages[first].locator("#check:not([disabled])").click();
    await pages[other(first)].locator("#check:not([disabled])").click();
    for (const name of ["alice", "bob"]) {
      await pages[name].locator("#board .card").nth(3).waitFor();
    }
  }
  await browser.close();
  console.log(`play ${phase}: every check passed`);
} catch (error) {
  console.error("FAILED: " + (error && error.message));
  await browser.close();
  process.exit(1);
}
