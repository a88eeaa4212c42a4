// The console in headless Chromium, against a node that `crates/node/tests/browser.rs`
// started and filled: sign in, find an entity by a query, pause and resume it, scrub a
// journal's history with the slider, retry and discard dead letters, watch the live charts
// move under calls, see the shards served. Exits non-zero on the first thing that is not as
// it should be.
//
//   node e2e/console.mjs http://127.0.0.1:PORT ADMIN_TOKEN [SCREENSHOT_DIR]
//
// Chromium is Debian's (`/usr/bin/chromium`, or CHROMIUM); playwright-core drives it.

import { chromium } from "playwright-core";

const [base, token, shots] = process.argv.slice(2);
if (!base || !token) {
  console.error("usage: node console.mjs BASE_URL ADMIN_TOKEN [SCREENSHOT_DIR]");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
const fail = async (page, what) => {
  console.error("FAILED: " + what);
  console.error(await page.locator("main").innerText().catch(() => "<no main>"));
  await browser.close();
  process.exit(1);
};
const shot = async (page, name) => {
  if (shots) await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
};

try {
  // Over HTTPS, the node's certificate is signed by the test's own authority.
  const page = await browser.newPage({
    viewport: { width: 1200, height: 800 },
    ignoreHTTPSErrors: base.startsWith("https:"),
  });
  page.setDefaultTimeout(10_000);
  await page.goto(base + "/console");

  // Without the token, the page says to sign in.
  await page.getByText("Sign in with the node's admin token").waitFor();
  await page.fill("#token", token);
  await page.click("#signin button");
  await page.locator("table").getByRole("link", { name: "counter", exact: true }).waitFor();
  // c-small and c-big are stored (the dead letters' entities are not).
  await page.locator('[data-stored="counter"]').getByText("2", { exact: true }).waitFor();
  await shot(page, "console-kinds");

  // A kind's entities, then a query by state.
  await page.locator("table").getByRole("link", { name: "counter", exact: true }).click();
  await page.getByRole("link", { name: "c-small" }).waitFor();
  await page.fill("#filter", "value > 100");
  await page.click("form.row button");
  // The query's table has a `state` column; the listing it replaces does not.
  await page.getByRole("columnheader", { name: "state", exact: true }).waitFor();
  await page.getByRole("link", { name: "c-big" }).waitFor();
  if ((await page.getByRole("link", { name: "c-small" }).count()) !== 0) {
    await fail(page, "the query `value > 100` found c-small");
  }
  await shot(page, "console-query");

  // An entity: its state, and pause / resume.
  await page.getByRole("link", { name: "c-big" }).click();
  await page.locator("#state").getByText('"value": 500').waitFor();
  await page.click("#pause");
  await page.locator("#status").getByText(/^pause: .*"paused":true/).waitFor();
  await page.goto(base + "/console#/kind/counter");
  await page.getByRole("cell", { name: "paused", exact: true }).waitFor();
  await page.goto(base + "/console#/entity/counter/c-big");
  await page.locator("#no-pending").waitFor();
  await page.click("#resume");
  await page.locator("#status").getByText(/^resume: .*"paused":false/).waitFor();
  // Deleted, once the operator confirms: the kind no longer lists it.
  page.once("dialog", (dialog) => dialog.accept());
  await page.click("#delete");
  await page.locator("#status").getByText("deleted counter/c-big").waitFor();
  // The page shows the entity gone before the test moves on (a render still in flight
  // would otherwise land over the next page).
  await page.getByText(/no_such_entity/).waitFor();
  await page.goto(base + "/console#/kind/counter");
  await page.getByRole("link", { name: "c-small" }).waitFor();
  if ((await page.getByRole("link", { name: "c-big", exact: true }).count()) !== 0) {
    await fail(page, "c-big is still listed after its deletion");
  }

  // A journal's history, scrubbed with the slider: the state after each step.
  await page.goto(base + "/console#/entity/jprobe/j1");
  const slider = page.locator("#step");
  await slider.waitFor();
  const [min, max] = [Number(await slider.getAttribute("min")), Number(await slider.getAttribute("max"))];
  if (!(min < max)) await fail(page, `the slider spans ${min}..${max}`);
  for (const step of [min, max - 1, max]) {
    await slider.fill(String(step));
    await page.locator("#step-label").getByText("step " + step).waitFor();
    // The probe's state after step N holds N tokens, the last one "t{N-1}".
    await page.locator("#past").getByText(`"t${step - 1}"`).waitFor();
    const shown = await page.locator("#past").innerText();
    if (shown.includes(`"t${step}"`)) await fail(page, `the state at step ${step} shows a later token`);
  }
  await shot(page, "console-history");

  // A probe with a timer due in an hour: the entity page lists it as pending.
  await page.goto(base + "/console#/entity/probe/p1");
  await page.getByRole("cell", { name: "timer", exact: true }).waitFor();
  await page.getByRole("cell", { name: '{"append":"later"}' }).waitFor();

  // Dead letters: retry one (applied, gone), discard the other.
  await page.goto(base + "/console#/dead-letters");
  const retry = page.locator('button[data-action="retry"]').first();
  await retry.waitFor();
  if ((await page.locator('button[data-action="retry"]').count()) !== 2) {
    await fail(page, "expected two dead letters");
  }
  await shot(page, "console-dead-letters");
  await retry.click();
  await page.locator("#status").getByText(/^retry \d+: /).waitFor();
  await page.waitForFunction(() => document.querySelectorAll('button[data-action="retry"]').length === 1);
  await page.locator('button[data-action="discard"]').click();
  await page.getByText("No dead letters.").waitFor();

  // Live charts from /metrics, while calls come in.
  await page.goto(base + "/console#/live");
  await page.locator("#calls").waitFor();
  let calling = true;
  const traffic = (async () => {
    for (let n = 0; calling; n++) {
      await fetch(base + "/v1/counter/live-" + (n % 50), {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: '{"add": 1}',
      });
    }
  })();
  await page.waitForFunction(() => Number(document.querySelector("#calls .value").textContent) > 0);
  await page.waitForFunction(() => Number(document.querySelector("#resident .value").textContent) > 0);
  await page.waitForFunction(() => Number(document.querySelector("#batch .value").textContent) > 0);
  await page.waitForFunction(() => document.querySelector("#calls polyline").getAttribute("points").split(" ").length >= 4);
  await shot(page, "console-live");
  calling = false;
  await traffic;

  // Which shards this node serves: all of them, on its own.
  await page.goto(base + "/console#/cluster");
  await page.locator("#served").getByText("1024", { exact: true }).waitFor();

  await browser.close();
  console.log("console: every check passed");
} catch (error) {
  console.error("FAILED: " + (error && error.message));
  await browser.close();
  process.exit(1);
}
