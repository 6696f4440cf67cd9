// The page in a real browser (headless Chromium, driven by playwright-core)
// against the real stack (devstack, which also serves the built page):
// sign in, place an order and cancel it, place another and see it change
// live when an admin moves it through ProcessOrders (shopctl, from this
// test), and see a clear message once the stack is stopped. Run by scripts/web-test.sh.
//
// SHOP_BIN_DIR: where devstack and shopctl are (the cargo target's debug
// directory). CHROMIUM: the browser (default /usr/bin/chromium).
// SCREENSHOT: where to write a screenshot of the page with a live order.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const bin = process.env.SHOP_BIN_DIR ?? resolve(here, "../../target/debug");
const browserPath = process.env.CHROMIUM ?? "/usr/bin/chromium";

/** `n` free ports, all held until every one is chosen. */
async function freePorts(n) {
  const servers = await Promise.all(
    Array.from({ length: n }, () => new Promise((ok) => {
      const server = createServer();
      server.listen(0, "127.0.0.1", () => ok(server));
    })),
  );
  const ports = servers.map((s) => s.address().port);
  await Promise.all(servers.map((s) => new Promise((ok) => s.close(ok))));
  return ports;
}

async function until(what, check, timeoutMs = 60_000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch {
      // not yet
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((ok) => setTimeout(ok, 200));
  }
}

async function rest(port, method, path, body, token) {
  const response = await fetch(`http://127.0.0.1:${port}${path}`, {
    method,
    headers: {
      "content-type": "application/json",
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await response.json();
  assert.equal(response.status, 200, `${method} ${path}: ${JSON.stringify(json)}`);
  return json;
}

/** Runs `shopctl orders process` as the admin with `lines` on stdin. */
function processOrders(ports, token, lines) {
  return new Promise((ok, fail) => {
    const shopctl = spawn(join(bin, "shopctl"), ["orders", "process"], {
      env: {
        PATH: process.env.PATH,
        SHOPCTL_ORDER_ADDR: `http://127.0.0.1:${ports.orders}`,
        SHOPCTL_TOKEN: token,
        SHOPCTL_CONFIG_DIR: ports.data,
      },
      stdio: ["pipe", "pipe", "pipe"],
    });
    let output = "";
    shopctl.stdout.on("data", (d) => (output += d));
    shopctl.stderr.on("data", (d) => (output += d));
    shopctl.on("exit", (code) => (code === 0 ? ok(output) : fail(new Error(`shopctl: ${code}\n${output}`))));
    shopctl.stdin.end(lines.join("\n") + "\n");
  });
}

test("a customer orders on the page, sees the admin ship it live, and is told when the stack stops", async (t) => {
  const [users, usersAdmin, orders, ordersAdmin, inventory, inventoryAdmin, web] = await freePorts(7);
  const data = mkdtempSync(join(tmpdir(), "shop-web-"));
  const logs = [];
  const devstack = spawn(
    join(bin, "devstack"),
    [
      "--data-dir", data,
      "--user-service-port", users, "--user-service-admin-port", usersAdmin,
      "--order-service-port", orders, "--order-service-admin-port", ordersAdmin,
      "--inventory-service-port", inventory, "--inventory-service-admin-port", inventoryAdmin,
      "--web-port", web, "--web-dir", resolve(here, "../dist"),
    ].map(String),
    { env: { PATH: process.env.PATH, RUST_LOG: "info,sqlx=warn" }, stdio: ["ignore", "pipe", "pipe"] },
  );
  devstack.stdout.on("data", (d) => logs.push(String(d)));
  devstack.stderr.on("data", (d) => logs.push(String(d)));
  const exited = new Promise((ok) => devstack.on("exit", ok));
  let browser;
  t.after(async () => {
    await browser?.close();
    if (devstack.exitCode === null) devstack.kill("SIGKILL");
    rmSync(data, { recursive: true, force: true });
  });
  // The error says whether devstack is still running and what it printed
  // last (the test runner shows an error's message, not the test's stderr).
  const failed = (error) => {
    const state = devstack.exitCode !== null
      ? `exited with status ${devstack.exitCode}`
      : devstack.signalCode ? `killed by ${devstack.signalCode}` : "still running";
    const tail = logs.join("").split("\n").slice(-40).join("\n");
    throw new Error(`${error.message}; devstack ${state}; its last output:\n${tail}`);
  };

  try {
    for (const port of [users, orders, inventory]) {
      await until(`the REST routes on ${port}`, async () => (await fetch(`http://127.0.0.1:${port}/openapi.json`)).ok);
    }
    await until("the page", async () => (await fetch(`http://127.0.0.1:${web}/`)).ok);
  } catch (error) {
    failed(error);
  }

  // A customer (signed up over REST) and the admin devstack created.
  const password = "correct horse battery";
  await rest(users, "POST", "/v1/users", {
    email: "wendy@example.com", username: "wendy", password, firstName: "Wendy", lastName: "Web",
  });
  const adminPassword = readFileSync(join(data, "devstack-admin-password"), "utf8").trim();
  const admin = await rest(users, "POST", "/v1/auth/login", { identifier: "admin@shop.local", password: adminPassword });

  browser = await chromium.launch({
    executablePath: browserPath,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  const page = await browser.newPage({ viewport: { width: 900, height: 820 } });
  const consoleErrors = [];
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  await page.goto(`http://127.0.0.1:${web}/`);

  // A wrong password says so.
  await page.getByLabel("Email or username").fill("wendy");
  await page.getByLabel("Password").fill("not the password");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").filter({ hasText: "Wrong email, username or password" }).waitFor();

  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByText("Signed in as wendy").waitFor();
  const rows = page.locator("#products tbody tr");
  await rows.first().waitFor();
  assert.ok((await rows.count()) >= 1, "the catalogue is listed");

  // One of the first product, cancelled from the page: its watch follows
  // it to the end.
  const status = page.locator("#order-status");
  await rows.first().locator("input").fill("1");
  await page.getByRole("button", { name: "Place order" }).click();
  await status.filter({ hasText: "PENDING" }).waitFor();
  const cancelledId = (await page.locator("#order-id").textContent()).trim();
  await page.getByRole("button", { name: "Cancel order" }).click();
  await status.filter({ hasText: "CANCELLED" }).waitFor();
  await page.getByText("(final)").waitFor();

  // Then two of it, which the admin ships.
  await rows.first().locator("input").fill("2");
  await page.getByRole("button", { name: "Place order" }).click();
  await until("the second order", async () =>
    (await page.locator("#order-id").textContent()).trim() !== cancelledId);
  await status.filter({ hasText: "PENDING" }).waitFor();
  const orderId = (await page.locator("#order-id").textContent()).trim();
  assert.match(orderId, /^[0-9a-f-]{36}$/);
  await page.getByText("● live").waitFor();

  // The admin confirms and ships it; the page follows without a reload.
  await processOrders({ orders, data }, admin.accessToken, [`${orderId} confirmed`]);
  await status.filter({ hasText: "CONFIRMED" }).waitFor();
  await processOrders({ orders, data }, admin.accessToken, [`${orderId} shipped`]);
  await status.filter({ hasText: "SHIPPED" }).waitFor();
  assert.equal(await page.getByRole("button", { name: "Cancel order" }).isDisabled(), true,
    "a shipped order cannot be cancelled");
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT });

  // The stack stops: the open watch ends, and the page says why.
  devstack.kill("SIGTERM");
  await exited;
  await page.getByRole("alert").filter({ hasText: "cannot be reached" }).waitFor({ timeout: 15_000 });
  const message = await page.getByRole("alert").textContent();
  assert.match(message, /Live updates stopped/);

  // A click with the stack gone gets the same clear message.
  await rows.first().locator("input").fill("1");
  await page.getByRole("button", { name: "Place order" }).click();
  await until("the order's own message", async () =>
    (await page.getByRole("alert").textContent()) === "The shop cannot be reached right now. Is the stack running?", 15_000);
  assert.deepEqual(consoleErrors, []);
});
