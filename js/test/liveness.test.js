// Liveness that knows the page: a hidden page's throttled timers never time the
// connection out; becoming visible probes at once, with a deadline from that probe.
import { test } from "node:test";
import assert from "node:assert/strict";

import { flush, reply } from "../test-support/fakes.js";
import { connectWebSocket, setup } from "../test-support/setup.js";

const pings = (ws) => ws.commands().filter((c) => c.method === "ping");

function hiddenPage() {
  const target = new EventTarget();
  const page = { hidden: true, target };
  return page;
}

test("hidden: an unanswered ping past its timeout does not end the connection; a new probe goes out", async () => {
  const page = hiddenPage();
  const ctx = setup({ lifecycleTarget: page.target, hidden: () => page.hidden, pingInterval: 1000, pingTimeout: 2000 });
  const ws = await connectWebSocket(ctx);
  await ctx.clock.advance(1000);
  assert.equal(pings(ws).length, 1);
  // The tab sleeps: timers fire a minute late and the answer has not been read yet.
  for (let i = 0; i < 5; i++) {
    ctx.clock.jump(60_000);
    await ctx.clock.advance(0); // the late timer runs
  }
  assert.equal(ctx.client.state, "connected");
  assert.deepEqual(ctx.of("disconnect"), []);
  assert.ok(pings(ws).length >= 5, `probing again each time: ${pings(ws).length}`);
  // Visible again: a probe at once; its answer keeps the connection.
  page.hidden = false;
  page.target.dispatchEvent(new Event("visibilitychange"));
  await flush();
  const probe = pings(ws).at(-1);
  ws.receive(reply(probe.id, {}));
  await ctx.clock.advance(1000);
  await ctx.clock.advance(1000);
  assert.equal(ctx.client.state, "connected");
  ctx.client.close();
});

test("the same silence in a visible page ends the connection (and it reconnects)", async () => {
  const ctx = setup({ lifecycleTarget: null, hidden: () => false, pingInterval: 1000, pingTimeout: 2000, transports: ["websocket"] });
  await connectWebSocket(ctx);
  await ctx.clock.advance(1000); // ping
  await ctx.clock.advance(1000);
  await ctx.clock.advance(1000);
  assert.equal(ctx.client.state, "disconnected");
  assert.equal(ctx.of("disconnect")[0].reason, "no heartbeat from the server");
  ctx.client.close();
});

test("visible again after a dead hidden spell: the wake probe finds it within pingTimeout", async () => {
  const page = hiddenPage();
  const ctx = setup({ lifecycleTarget: page.target, hidden: () => page.hidden, pingInterval: 1000, pingTimeout: 2000, transports: ["websocket"] });
  const ws = await connectWebSocket(ctx);
  ctx.clock.jump(600_000);
  await ctx.clock.advance(0);
  page.hidden = false;
  page.target.dispatchEvent(new Event("visibilitychange"));
  await flush();
  const sent = pings(ws).length;
  assert.ok(sent >= 1);
  await ctx.clock.advance(1000);
  assert.equal(ctx.client.state, "connected", "the probe has its full timeout");
  await ctx.clock.advance(1000);
  await ctx.clock.advance(1000);
  assert.equal(ctx.of("disconnect")[0]?.reason, "no heartbeat from the server", "never answered: lost, to be recovered");
  ctx.client.close();
});
