// The client over a fake WebSocket: connect, subscribe, publish, batching, calls, close.
import { test } from "node:test";
import assert from "node:assert/strict";

import { BackchannelError, ErrorCode, MAX_BATCH } from "../backchannel.js";
import { errorReply, flush, publication, reply } from "../test-support/fakes.js";
import { URL_WS, answerSubscribe, connectWebSocket, setup } from "../test-support/setup.js";

test("connect, subscribe and publish with an ack over WebSocket", async () => {
  const ctx = setup({ token: "tok", name: "web/1" });
  const { client, WS } = ctx;
  assert.equal(client.state, "disconnected");
  const connecting = client.connect();
  assert.equal(client.state, "connecting");
  const ws = WS.last();
  assert.equal(ws.url, URL_WS);
  assert.equal(ws.sent.length, 0, "nothing sent before the socket opens");
  ws.open();
  assert.deepEqual(JSON.parse(ws.sent[0]), {
    id: 1,
    method: "connect",
    params: { v: 1, token: "tok", name: "web/1" },
  });
  ws.receive(reply(1, { client: "c-1", user: "alice", v: 1 }));
  await connecting;
  assert.equal(client.state, "connected");
  assert.equal(client.clientId, "c-1");
  assert.equal(client.user, "alice");
  assert.equal(client.transport, "websocket");
  assert.deepEqual(ctx.of("state"), [["connecting", "disconnected"], ["connected", "connecting"]]);
  assert.deepEqual(ctx.of("transport"), ["websocket"]);

  const received = [];
  const sub = client.subscribe("news", { onPublication: (p) => received.push(p) });
  assert.equal(sub.state, "subscribing");
  await flush();
  const subscribe = ws.lastCommand("subscribe");
  assert.deepEqual(subscribe.params, { channel: "news" }, "no recovery on a first subscribe");
  ws.receive(reply(subscribe.id, { epoch: "E1", offset: 5 }));
  await sub.ready();
  assert.equal(sub.state, "subscribed");
  assert.equal(sub.epoch, "E1");
  assert.equal(sub.offset, 5);

  const published = sub.publish({ text: "hi" }, { idempotencyKey: "k-1" });
  await flush();
  const cmd = ws.lastCommand("publish");
  assert.deepEqual(cmd.params, { channel: "news", data: { text: "hi" }, idempotency_key: "k-1" });
  ws.receive(reply(cmd.id, { offset: 6, epoch: "E1" }) + "\n" + publication("news", { text: "hi" }, 6, "E1"));
  assert.deepEqual(await published, { offset: 6, epoch: "E1" });
  assert.deepEqual(received, [{ channel: "news", data: { text: "hi" }, offset: 6, epoch: "E1" }]);
  assert.equal(sub.offset, 6);

  // An error reply rejects with {code, message, temporary}.
  const refused = sub.publish("x");
  await flush();
  ws.receive(errorReply(ws.lastCommand("publish").id, 103, "permission denied"));
  await assert.rejects(refused, (err) => {
    assert.ok(err instanceof BackchannelError);
    assert.equal(err.code, 103);
    assert.equal(err.message, "permission denied");
    assert.equal(err.temporary, false);
    return true;
  });
  client.close();
});

test("a frame of several lines: replies and pushes handled in order", async () => {
  const ctx = setup();
  const ws = await connectWebSocket(ctx);
  const seen = [];
  const sub = ctx.client.subscribe("chat", {
    onPublication: (p) => seen.push(["pub", p.data]),
    onJoin: (c) => seen.push(["join", c.info.user]),
    onLeave: (c) => seen.push(["leave", c.info.user]),
  });
  await answerSubscribe(ws, "chat", {});
  const rpc = ctx.client.rpc("time");
  await flush();
  const id = ws.lastCommand("rpc").id;
  ws.receive(
    [
      JSON.stringify({ push: "join", channel: "chat", info: { client: "c-2", user: "bob" } }),
      publication("chat", "one"),
      "",
      reply(id, { data: 42 }) + "\r",
      publication("chat", "two"),
      "   ",
      JSON.stringify({ push: "leave", channel: "chat", info: { client: "c-2", user: "bob" } }),
      publication("other", "not ours"),
    ].join("\n"),
  );
  assert.equal(await rpc, 42);
  assert.deepEqual(seen, [["join", "bob"], ["pub", "one"], ["pub", "two"], ["leave", "bob"]]);
  assert.equal(sub.state, "subscribed");
  ctx.client.close();
});

test("commands issued together travel in one frame, at most MAX_BATCH a frame", async () => {
  const ctx = setup();
  const ws = await connectWebSocket(ctx);
  const before = ws.sent.length;
  const calls = [ctx.client.rpc("a", 1), ctx.client.send({ typing: true }), ctx.client.rpc("b")];
  await flush();
  assert.equal(ws.sent.length, before + 1, "one frame");
  const lines = ws.sent[before].split("\n").map((l) => JSON.parse(l));
  assert.deepEqual(
    lines.map((c) => [c.method, c.params]),
    [
      ["rpc", { method: "a", data: 1 }],
      ["send", { data: { typing: true } }],
      ["rpc", { method: "b" }],
    ],
  );
  // Replies out of order are matched by id.
  ws.receive([reply(lines[2].id, { data: "B" }), reply(lines[0].id, { data: "A" }), reply(lines[1].id, {})].join("\n"));
  assert.deepEqual(await Promise.all(calls), ["A", undefined, "B"]);

  const many = Array.from({ length: 250 }, (_, i) => ctx.client.rpc("n", i));
  await flush();
  const frames = ws.sent.slice(before + 1);
  assert.deepEqual(frames.map((f) => f.split("\n").length), [MAX_BATCH, MAX_BATCH, 50]);
  const ids = frames.flatMap((f) => f.split("\n").map((l) => JSON.parse(l).id));
  assert.equal(new Set(ids).size, 250, "ids are unique");
  ws.receive(ids.map((id, i) => reply(id, { data: i })).join("\n"));
  assert.deepEqual(await Promise.all(many), Array.from({ length: 250 }, (_, i) => i));
  ctx.client.close();
});

test("presence and history wait for the subscription and pass their params", async () => {
  const ctx = setup();
  const ws = await connectWebSocket(ctx);
  const sub = ctx.client.subscribe("room");
  const presence = sub.presence();
  const history = sub.history({ limit: 10, since: { epoch: "E", offset: 3 } });
  await flush();
  assert.equal(ws.lastCommand("presence"), undefined, "not before the subscribe answer");
  await answerSubscribe(ws, "room", { epoch: "E", offset: 9 });
  const p = ws.lastCommand("presence");
  const h = ws.lastCommand("history");
  assert.deepEqual(p.params, { channel: "room" });
  assert.deepEqual(h.params, { channel: "room", limit: 10, epoch: "E", offset: 3 });
  ws.receive(reply(p.id, { count: 3, users: 2 }) + "\n" + reply(h.id, { publications: [], epoch: "E", offset: 9, recovered: true }));
  assert.deepEqual(await presence, { count: 3, users: 2 });
  assert.deepEqual(await history, { publications: [], epoch: "E", offset: 9, recovered: true });
  await assert.rejects(sub.history({ limit: -1 }), (e) => e.code === ErrorCode.BAD_ARGUMENT);
  await assert.rejects(sub.publish(NaN), (e) => e.code === ErrorCode.BAD_ARGUMENT);
  ctx.client.close();
});

test("a command without a reply times out (temporary); a late reply is ignored", async () => {
  const ctx = setup({ timeout: 5000 });
  const ws = await connectWebSocket(ctx);
  const call = ctx.client.rpc("slow");
  await flush();
  const id = ws.lastCommand("rpc").id;
  let settled = false;
  call.catch(() => {}).finally(() => (settled = true));
  await ctx.clock.advance(4999);
  assert.equal(settled, false);
  await ctx.clock.advance(1);
  await assert.rejects(call, (e) => e.code === ErrorCode.TIMEOUT && e.temporary === true);
  ws.receive(reply(id, { data: 1 }));
  assert.equal(ctx.client.state, "connected");
  ctx.client.close();
});

test("calls made before connecting wait for the connection", async () => {
  const ctx = setup();
  const early = ctx.client.rpc("hello", "world");
  const connecting = ctx.client.connect();
  const ws = ctx.WS.last();
  ws.open();
  await flush();
  assert.deepEqual(ws.commands().map((c) => c.method), ["connect"]);
  ws.receive(reply(ws.lastCommand("connect").id, { client: "c", user: "", v: 1 }));
  await connecting;
  await flush();
  const rpc = ws.lastCommand("rpc");
  assert.deepEqual(rpc.params, { method: "hello", data: "world" });
  ws.receive(reply(rpc.id, { data: "hi" }));
  assert.equal(await early, "hi");
  ctx.client.close();
});

test("close() settles everything: pending calls, connect(), ready()", async () => {
  const ctx = setup();
  const ws = await connectWebSocket(ctx);
  const sub = ctx.client.subscribe("s");
  const ready = sub.ready();
  const inflight = ctx.client.rpc("x");
  await flush();
  ctx.client.close();
  await assert.rejects(inflight, (e) => e.code === ErrorCode.CLIENT_CLOSED);
  await assert.rejects(ready, (e) => e.code === ErrorCode.CLIENT_CLOSED);
  assert.equal(ctx.client.state, "closed");
  assert.deepEqual(ws.closedWith, { code: 1000, reason: undefined });
  assert.deepEqual(ctx.of("disconnect").pop(), { code: 1000, reason: "closed by the client", reconnect: false });
  assert.equal(ctx.clock.pending().length, 0, "no timer left");
  await assert.rejects(ctx.client.rpc("after"), (e) => e.code === ErrorCode.CLIENT_CLOSED);

  // A connect() still waiting is rejected by close() too.
  const ctx2 = setup();
  const waiting = ctx2.client.connect();
  ctx2.client.close();
  await assert.rejects(waiting, (e) => e.code === ErrorCode.CLIENT_CLOSED);
  assert.equal(ctx2.clock.pending().length, 0);

  // connect() after close() starts again, and the subscription comes back.
  const again = ctx.client.connect();
  const ws2 = ctx.WS.last();
  assert.notEqual(ws2, ws);
  ws2.open();
  await flush();
  ws2.receive(reply(ws2.lastCommand("connect").id, { client: "c2", user: "", v: 1 }));
  await again;
  await answerSubscribe(ws2, "s", {});
  assert.equal(sub.state, "subscribed");
  ctx.client.close();
});

test("unsubscribe: the command is sent, onUnsubscribe called, waiting calls rejected", async () => {
  const ctx = setup();
  const ws = await connectWebSocket(ctx);
  const ends = [];
  const sub = ctx.client.subscribe("s", { onUnsubscribe: (c) => ends.push(c) });
  const waiting = assert.rejects(sub.publish(1), (e) => e.code === ErrorCode.SUBSCRIPTION_CLOSED);
  sub.unsubscribe();
  await flush();
  await waiting;
  assert.deepEqual(ws.commands().filter((c) => c.params?.channel === "s").map((c) => c.method), ["subscribe", "unsubscribe"]);
  assert.deepEqual(ends, [{ channel: "s", code: 0, reason: "unsubscribe called" }]);
  assert.equal(sub.state, "unsubscribed");
  assert.equal(ctx.client.getSubscription("s"), undefined);
  // A new subscription to the channel is allowed; a second one at once is not.
  const again = ctx.client.subscribe("s");
  assert.throws(() => ctx.client.subscribe("s"));
  assert.equal(again.state, "subscribing");
  ctx.client.close();
});

test("an unsubscribe push from the server ends the subscription", async () => {
  const ctx = setup();
  const ws = await connectWebSocket(ctx);
  const ends = [];
  const sub = ctx.client.subscribe("s", { onUnsubscribe: (c) => ends.push(c) });
  await answerSubscribe(ws, "s");
  ws.receive(JSON.stringify({ push: "unsubscribe", channel: "s", code: 117, reason: "unsubscribed by the server" }));
  assert.equal(sub.state, "unsubscribed");
  assert.deepEqual(ends, [{ channel: "s", code: 117, reason: "unsubscribed by the server" }]);
  await assert.rejects(sub.publish(1), (e) => e.code === ErrorCode.SUBSCRIPTION_CLOSED);
  ctx.client.close();
});

test("a subscribe error: temporary ones are retried, others end the subscription", async () => {
  const ctx = setup();
  const ws = await connectWebSocket(ctx);
  const errors = [];
  const ends = [];
  const sub = ctx.client.subscribe("busy", { onError: (e) => errors.push(e.code), onUnsubscribe: (c) => ends.push(c.code) });
  await flush();
  ws.receive(errorReply(ws.lastCommand("subscribe").id, 116, "service unavailable", true));
  await flush();
  assert.equal(sub.state, "subscribing");
  assert.deepEqual(errors, [116]);
  const count = () => ws.commands().filter((c) => c.method === "subscribe").length;
  assert.equal(count(), 1);
  await ctx.clock.advance(250); // 0.5 * 500
  assert.equal(count(), 2, "subscribed again after the backoff");
  ws.receive(errorReply(ws.lastCommand("subscribe").id, 103, "permission denied"));
  await flush();
  assert.equal(sub.state, "unsubscribed");
  assert.deepEqual(errors, [116, 103]);
  assert.deepEqual(ends, [103]);
  ctx.client.close();
});

test("a listener or callback that throws becomes an error event, nothing breaks", async () => {
  const ctx = setup();
  ctx.client.on("state", () => {
    throw new Error("listener bug");
  });
  const ws = await connectWebSocket(ctx);
  const sub = ctx.client.subscribe("s", {
    onPublication: () => {
      throw new Error("callback bug");
    },
  });
  await answerSubscribe(ws, "s");
  ws.receive(publication("s", 1));
  ws.receive("not json");
  const messages = ctx.of("error").map((e) => e.message);
  assert.ok(messages.includes("listener bug"));
  assert.ok(messages.includes("callback bug"));
  assert.ok(ctx.of("error").some((e) => e.code === ErrorCode.BAD_RESPONSE));
  assert.equal(ctx.client.state, "connected");
  assert.equal(sub.state, "subscribed");
  ctx.client.close();
});

test("the long-polling URL defaults to the WebSocket URL's host, http(s), path /lp", async () => {
  const { defaultLongPollUrl } = await import("../backchannel.js");
  assert.equal(defaultLongPollUrl("wss://example.com:8443/ws?x=1#h"), "https://example.com:8443/lp");
  assert.equal(defaultLongPollUrl("ws://localhost/"), "http://localhost/lp");
  assert.equal(defaultLongPollUrl("not a url"), null);
  // Any path that does not end in the segment /ws is replaced whole.
  assert.equal(defaultLongPollUrl("ws://localhost/socket"), "http://localhost/lp");
  assert.equal(defaultLongPollUrl("ws://localhost/news"), "http://localhost/lp");
  const ctx = setup({ transports: ["longpoll"], longPollUrl: "https://other.test/poll?app=1" });
  ctx.client.connect();
  await flush();
  const open = ctx.net.one("POST");
  assert.equal(open.url, "https://other.test/poll?app=1");
  open.respond(200, { sid: "a b", ack: 0 });
  await flush();
  assert.equal(ctx.net.one("GET").url, "https://other.test/poll?app=1&sid=a%20b&ack=0");
  ctx.client.close();
});

test("under a mount, the long-polling and SSE URLs replace the WebSocket path's last segment /ws", async () => {
  const { defaultLongPollUrl, defaultSseUrl } = await import("../backchannel.js");
  assert.equal(defaultLongPollUrl("wss://example.com/realtime/ws"), "https://example.com/realtime/lp");
  assert.equal(defaultSseUrl("wss://example.com/realtime/ws?x=1"), "https://example.com/realtime/sse");
  assert.equal(defaultSseUrl("ws://localhost:8000/a/b/ws"), "http://localhost:8000/a/b/sse");
  assert.equal(defaultSseUrl("ws://localhost:8000/ws"), "http://localhost:8000/sse");
  assert.equal(defaultSseUrl("ws://localhost:8000/realtime/socket"), "http://localhost:8000/sse");
  // A client given only the mounted WebSocket URL falls back to the mounted endpoints.
  const ctx = setup({ transports: ["longpoll"] }, { url: "ws://hub.test/realtime/ws" });
  ctx.client.connect();
  await flush();
  assert.equal(ctx.net.one("POST").url, "http://hub.test/realtime/lp");
  ctx.client.close();
});
