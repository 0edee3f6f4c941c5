// Choosing the transport: WebSocket first, then SSE, then long polling when one does not
// get through, remembered for the page (and its reloads), the first tried again later.
import { test } from "node:test";
import assert from "node:assert/strict";

import { Client, usingLongPollFallback } from "../backchannel.js";
import { fallbackTransport, transportMemory } from "../lib/transports.js";
import { FakeStorage, flush, reply } from "../test-support/fakes.js";
import { URL_LP, URL_SSE, acceptLongPoll, acceptSse, acceptWebSocket, pendingPoll, setup } from "../test-support/setup.js";

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

/** Another client of the same page, with the same fakes. */
function sibling(ctx, options = {}) {
  return new Client("ws://hub.test/ws", {
    WebSocket: ctx.WS,
    EventSource: ctx.ES,
    fetch: ctx.net.fetch,
    setTimeout: ctx.clock.setTimeout,
    clearTimeout: ctx.clock.clearTimeout,
    now: ctx.clock.dateNow,
    lifecycleTarget: null,
    ...options,
  });
}

test("websocket, sse, longpoll by default: an upgrade refused goes to SSE, remembered for the page", async () => {
  const ctx = setup({}, { sse: true });
  const connecting = ctx.client.connect();
  ctx.WS.last().fail(); // a proxy that refuses upgrades
  await flush();
  assert.equal(ctx.ES.instances.length, 1, "SSE is tried next");
  assert.equal(ctx.net.requests.length, 0, "not long polling");
  await acceptSse(ctx, "S1");
  await connecting;
  assert.equal(ctx.client.transport, "sse");
  assert.deepEqual(ctx.of("transport"), ["sse"]);
  assert.deepEqual(ctx.of("disconnect"), [], "falling back is not a disconnect");
  assert.equal(fallbackTransport(), "sse");
  assert.equal(usingLongPollFallback(), false);

  const other = sibling(ctx);
  const sockets = ctx.WS.instances.length;
  other.connect();
  await flush();
  assert.equal(ctx.WS.instances.length, sockets, "no WebSocket tried");
  assert.equal(ctx.ES.instances.length, 2, "the other client starts with SSE");
  other.close();
  ctx.client.close();
});

test("a stream held back by a buffering proxy (no session within fallbackTimeout): long polling", async () => {
  const ctx = setup({ fallbackTimeout: 3000 }, { sse: true });
  const connecting = ctx.client.connect();
  ctx.WS.last().fail();
  await flush();
  const es = ctx.ES.last();
  await ctx.clock.advance(2999);
  assert.equal(ctx.net.requests.length, 0);
  await ctx.clock.advance(1);
  assert.equal(es.closed, true, "the held stream is closed");
  await acceptLongPoll(ctx, "L1");
  await connecting;
  assert.equal(ctx.client.transport, "longpoll");
  assert.equal(fallbackTransport(), "longpoll");
  assert.equal(usingLongPollFallback(), true);
  ctx.client.close();
});

test("on SSE, every 5th reconnect tries WebSocket again; failing, it goes straight back to SSE; working, it is forgotten", async () => {
  const ctx = setup({ random: () => 0 }, { sse: true });
  ctx.client.connect();
  ctx.WS.last().fail();
  let es = await acceptSse(ctx, "S0");
  const used = [];
  for (let attempt = 1; attempt <= 5; attempt++) {
    es.fail(); // the stream drops: reconnect
    await flush();
    const sockets = ctx.WS.instances.length;
    const streams = ctx.ES.instances.length;
    await ctx.clock.next(); // backoff (0 with random 0)
    if (ctx.WS.instances.length > sockets) {
      used.push("websocket");
      ctx.WS.last().fail(); // refused again
      await flush();
      assert.equal(ctx.ES.instances.length, streams + 1, "straight back to SSE");
      es = await acceptSse(ctx, `S${attempt}`);
      continue;
    }
    used.push("sse");
    es = await acceptSse(ctx, `S${attempt}`);
  }
  assert.deepEqual(used, ["sse", "sse", "sse", "sse", "websocket"]);
  assert.equal(ctx.client.transport, "sse");
  assert.equal(fallbackTransport(), "sse");
  // Five more: the WebSocket retry works now, and the page forgets the fallback.
  for (let attempt = 0; attempt < 5 && ctx.client.transport !== "websocket"; attempt++) {
    es.fail();
    await flush();
    const sockets = ctx.WS.instances.length;
    await ctx.clock.next();
    if (ctx.WS.instances.length > sockets) await acceptWebSocket(ctx);
    else es = await acceptSse(ctx, `T${attempt}`);
  }
  assert.equal(ctx.client.transport, "websocket");
  assert.equal(fallbackTransport(), null);
  ctx.client.close();
});

test("the memory outlives a reload of the tab (sessionStorage)", async () => {
  const storage = new FakeStorage();
  globalThis.sessionStorage = storage;
  try {
    const ctx = setup({}, { sse: true });
    ctx.client.connect();
    ctx.WS.last().fail();
    await acceptSse(ctx, "S1");
    assert.equal(JSON.parse(storage.getItem("backchannel:transport")).fallback, "sse");
    ctx.client.close();
    // The page reloads: its modules start afresh, the tab's storage stays.
    transportMemory.fallback = null;
    transportMemory.since = null;
    transportMemory.loaded = false;
    const after = sibling(ctx);
    const sockets = ctx.WS.instances.length;
    after.connect();
    await flush();
    assert.equal(ctx.WS.instances.length, sockets, "no WebSocket tried after the reload");
    assert.equal(ctx.ES.last().url.startsWith(URL_SSE), true);
    after.close();
  } finally {
    delete globalThis.sessionStorage;
  }
});

test("the order is the page's: transports ['sse', 'websocket'] starts with SSE and falls to WebSocket", async () => {
  const ctx = setup({ transports: ["sse", "websocket"] }, { sse: true });
  const connecting = ctx.client.connect();
  await flush();
  assert.equal(ctx.WS.instances.length, 0);
  ctx.ES.last().fail(); // SSE refused (a 404 from a server without it)
  await flush();
  assert.equal(ctx.ES.last().closed, true);
  await acceptWebSocket(ctx);
  await connecting;
  assert.equal(ctx.client.transport, "websocket");
  assert.equal(fallbackTransport(), "websocket");
  ctx.client.close();
});

test("a client forced to long polling does not make the page forget that WebSocket fails", async () => {
  const ctx = setup({}, { sse: true });
  ctx.client.connect();
  ctx.WS.last().fail();
  await acceptSse(ctx, "S1");
  assert.equal(fallbackTransport(), "sse");
  const polling = sibling(ctx, { transports: ["longpoll"] });
  polling.connect();
  await acceptLongPoll(ctx, "L1");
  assert.equal(polling.transport, "longpoll");
  assert.equal(fallbackTransport(), "sse", "still remembered");
  polling.close();
  ctx.client.close();
});
