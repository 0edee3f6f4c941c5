// Choosing the transport: WebSocket first, long polling when it does not get through,
// remembered for the page, WebSocket tried again later.
import { test } from "node:test";
import assert from "node:assert/strict";

import { Client, usingLongPollFallback } from "../backchannel.js";
import { flush, reply } from "../test-support/fakes.js";
import { URL_LP, acceptLongPoll, acceptWebSocket, pendingPoll, setup } from "../test-support/setup.js";

test("a WebSocket that fails before its first message: long polling at once, remembered", async () => {
  const ctx = setup();
  const connecting = ctx.client.connect();
  ctx.WS.last().fail();
  await flush();
  assert.equal(ctx.net.requests.length, 1);
  const connect = await acceptLongPoll(ctx, "S1");
  assert.equal(connect.method, "connect");
  await connecting;
  assert.equal(ctx.client.state, "connected");
  assert.equal(ctx.client.transport, "longpoll");
  assert.deepEqual(ctx.of("transport"), ["longpoll"]);
  assert.deepEqual(ctx.of("disconnect"), [], "falling back is not a disconnect");
  assert.equal(usingLongPollFallback(), true);

  // Another client of the same page starts with long polling.
  const other = new Client("ws://hub.test/ws", {
    WebSocket: ctx.WS,
    fetch: ctx.net.fetch,
    setTimeout: ctx.clock.setTimeout,
    clearTimeout: ctx.clock.clearTimeout,
    now: ctx.clock.dateNow,
  });
  const sockets = ctx.WS.instances.length;
  other.connect();
  await flush();
  assert.equal(ctx.WS.instances.length, sockets, "no WebSocket tried");
  const opens = ctx.net.open("POST").filter((r) => r.url === URL_LP);
  assert.equal(opens.length, 1);
  other.close();
  ctx.client.close();
});

test("a WebSocket that stays silent for fallbackTimeout: long polling", async () => {
  const ctx = setup({ fallbackTimeout: 3000 });
  const connecting = ctx.client.connect();
  const ws = ctx.WS.last();
  ws.open(); // the upgrade went through, but nothing comes back
  await ctx.clock.advance(2999);
  assert.equal(ctx.net.requests.length, 0);
  await ctx.clock.advance(1);
  assert.ok(ws.closedWith, "the silent socket is closed");
  await acceptLongPoll(ctx);
  await connecting;
  assert.equal(ctx.client.transport, "longpoll");
  ctx.client.close();
});

test("a WebSocket constructor that throws: long polling", async () => {
  const ctx = setup();
  ctx.WS.throwOnCreate = new Error("blocked by policy");
  const connecting = ctx.client.connect();
  await acceptLongPoll(ctx);
  await connecting;
  assert.equal(ctx.client.transport, "longpoll");
  ctx.client.close();
});

test("a WebSocket that worked, then dropped, reconnects over WebSocket", async () => {
  const ctx = setup();
  ctx.client.connect();
  const ws = await acceptWebSocket(ctx);
  ws.serverClose(1006);
  await ctx.clock.next();
  assert.equal(ctx.WS.instances.length, 2);
  assert.equal(ctx.net.requests.length, 0);
  assert.equal(usingLongPollFallback(), false);
  ctx.client.close();
});

test("WebSocket only: no fallback, reconnect with backoff", async () => {
  const ctx = setup({ transports: ["websocket"] });
  ctx.client.connect();
  ctx.WS.last().fail();
  await flush();
  assert.equal(ctx.net.requests.length, 0);
  assert.equal(ctx.client.state, "disconnected");
  assert.deepEqual(ctx.of("disconnect"), [{ code: 1006, reason: "WebSocket closed", reconnect: true }]);
  assert.equal(await ctx.clock.next(), 250);
  assert.equal(ctx.WS.instances.length, 2);
  ctx.client.close();
});

test("on long polling, every 5th reconnect tries WebSocket again; success clears the memory", async () => {
  const ctx = setup({ random: () => 0 });
  ctx.client.connect();
  ctx.WS.last().fail();
  await acceptLongPoll(ctx, "S1");
  assert.equal(ctx.client.transport, "longpoll");
  // The session is lost: reconnect; make the long-poll opens fail.
  pendingPoll(ctx, "S1", 1).respond(404, { error: "unknown session", reconnect: true });
  await flush();
  const used = [];
  for (let attempt = 1; attempt <= 5; attempt++) {
    const sockets = ctx.WS.instances.length;
    await ctx.clock.next(); // backoff (0 with random 0)
    if (ctx.WS.instances.length > sockets) {
      used.push("websocket");
      break;
    }
    used.push("longpoll");
    ctx.net.one("POST").respond(503, "busy");
    await flush();
  }
  assert.deepEqual(used, ["longpoll", "longpoll", "longpoll", "longpoll", "websocket"]);
  await acceptWebSocket(ctx);
  assert.equal(ctx.client.transport, "websocket");
  assert.equal(usingLongPollFallback(), false);
  ctx.client.close();
});

test("on long polling, WebSocket is tried again after 5 minutes", async () => {
  const ctx = setup({ random: () => 0 });
  ctx.client.connect();
  ctx.WS.last().fail();
  await acceptLongPoll(ctx, "S1");
  ctx.clock.jump(5 * 60 * 1000);
  pendingPoll(ctx, "S1", 1).respond(410, { error: "session closed", reconnect: true });
  await flush();
  const sockets = ctx.WS.instances.length;
  await ctx.clock.next();
  assert.equal(ctx.WS.instances.length, sockets + 1, "WebSocket probed");
  // It fails again: long polling again, at once, and the clock restarts.
  ctx.WS.last().fail();
  await flush();
  const open = ctx.net.one("POST");
  assert.equal(open.url, URL_LP);
  open.respond(200, { sid: "S2", ack: 0 });
  await flush();
  pendingPoll(ctx, "S2", 0).respond(200, `{"batch":1}\n` + reply(JSON.parse(open.body).id, { client: "c", user: "", v: 1 }));
  await flush();
  assert.equal(ctx.client.transport, "longpoll");
  assert.equal(usingLongPollFallback(), true);
  ctx.client.close();
});
