// Reconnecting: backoff with full jitter, resubscribe with recovery, offsets never
// delivered twice, reconnect: false stops, heartbeats.
import { test } from "node:test";
import assert from "node:assert/strict";

import { ErrorCode } from "../backchannel.js";
import { disconnectPush, flush, publication, reply } from "../test-support/fakes.js";
import { acceptWebSocket, answerSubscribe, connectWebSocket, setup } from "../test-support/setup.js";

test("backoff: delay = random(0, min(max, min * 2**attempt)), reset after a connection", async () => {
  const draws = [0.5, 0.999, 0.25, 0.5, 0.5, 0.5, 0.5, 0.5, 0.1];
  let i = 0;
  const ctx = setup({ transports: ["websocket"], random: () => draws[i++ % draws.length], minReconnectDelay: 500, maxReconnectDelay: 20000 });
  ctx.client.connect();
  const delays = [];
  for (let attempt = 0; attempt < 8; attempt++) {
    ctx.WS.last().fail();
    await flush();
    assert.equal(ctx.client.state, "disconnected");
    const due = ctx.client.reconnectAt;
    const sockets = ctx.WS.instances.length;
    delays.push(await ctx.clock.next());
    assert.equal(due, ctx.clock.now, "reconnectAt says when the attempt is made");
    assert.equal(ctx.client.reconnectAt, null, "no backoff while connecting");
    assert.equal(ctx.WS.instances.length, sockets + 1, "a new attempt after the delay");
    assert.equal(ctx.client.state, "connecting");
  }
  const expected = [0.5 * 500, Math.floor(0.999 * 1000), 0.25 * 2000, 0.5 * 4000, 0.5 * 8000, 0.5 * 16000, 0.5 * 20000, 0.5 * 20000];
  assert.deepEqual(delays, expected);
  // A connection resets the attempts: the next delay is from the minimum again.
  await acceptWebSocket(ctx);
  assert.equal(ctx.client.state, "connected");
  ctx.WS.last().serverClose(3001, "server error");
  await flush();
  assert.deepEqual(ctx.of("disconnect").pop(), { code: 3001, reason: "server error", reconnect: true });
  assert.equal(await ctx.clock.next(), Math.floor(0.1 * 500));
  ctx.client.close();
});

test("reconnect: resubscribe with recover, epoch and offset; recovered publications in order, none twice", async () => {
  const ctx = setup();
  const ws = await connectWebSocket(ctx);
  const got = [];
  const subscribed = [];
  const sub = ctx.client.subscribe("chat", {
    onPublication: (p) => got.push(p.offset),
    onSubscribed: (c) => subscribed.push(c),
  });
  await answerSubscribe(ws, "chat", { epoch: "E", offset: 10 });
  ws.receive([publication("chat", "a", 11, "E"), publication("chat", "b", 12, "E")].join("\n"));
  assert.deepEqual(got, [11, 12]);

  ws.receive(disconnectPush(3006, "reconnect", true));
  await flush();
  assert.equal(sub.state, "subscribing");
  assert.equal(ctx.client.state, "disconnected");
  await ctx.clock.next();
  const ws2 = await acceptWebSocket(ctx, { client: "c2", user: "alice", v: 1 });
  await flush();
  const resub = ws2.lastCommand("subscribe");
  assert.deepEqual(resub.params, { channel: "chat", recover: true, epoch: "E", offset: 12 });
  // Publications already delivered (11, 12) are skipped, the rest come in order; a
  // live one seen again is skipped too.
  const pubs = [11, 12, 13, 14].map((o) => ({ channel: "chat", data: o, offset: o, epoch: "E" }));
  ws2.receive(
    [
      reply(resub.id, { epoch: "E", offset: 14, recovered: true, publications: pubs }),
      publication("chat", 14, 14, "E"),
      publication("chat", 15, 15, "E"),
    ].join("\n"),
  );
  await flush();
  assert.deepEqual(got, [11, 12, 13, 14, 15]);
  assert.equal(sub.state, "subscribed");
  assert.deepEqual(subscribed.map((c) => [c.recovering, c.recovered, c.epoch, c.offset]), [
    [false, null, "E", 10],
    [true, true, "E", 14],
  ]);
  assert.equal(sub.offset, 15);
  ctx.client.close();
});

test("recovered: false calls onRecoveryFailed; the result's publications are not delivered", async () => {
  const ctx = setup();
  const ws = await connectWebSocket(ctx);
  const got = [];
  const failed = [];
  const sub = ctx.client.subscribe("chat", { onPublication: (p) => got.push(p.data), onRecoveryFailed: (c) => failed.push(c) });
  await answerSubscribe(ws, "chat", { epoch: "E", offset: 3 });
  ws.serverClose(1006);
  await ctx.clock.next();
  const ws2 = await acceptWebSocket(ctx);
  const cmd = await answerSubscribe(ws2, "chat", {
    epoch: "F",
    offset: 2,
    recovered: false,
    publications: [{ channel: "chat", data: "stale", offset: 2, epoch: "F" }],
  });
  assert.deepEqual(cmd.params, { channel: "chat", recover: true, epoch: "E", offset: 3 });
  assert.deepEqual(failed, [{ channel: "chat", epoch: "E", offset: 3 }]);
  assert.deepEqual(got, []);
  assert.equal(sub.epoch, "F");
  assert.equal(sub.offset, 2);
  // Live publications of the new stream follow.
  ws2.receive(publication("chat", "new", 3, "F"));
  assert.deepEqual(got, ["new"]);
  ctx.client.close();
});

test("without onRecoveryFailed, a failed recovery reaches onError as 112", async () => {
  const ctx = setup();
  const ws = await connectWebSocket(ctx);
  const errors = [];
  ctx.client.subscribe("c", { onError: (e) => errors.push(e.code) });
  await answerSubscribe(ws, "c", { epoch: "E", offset: 1 });
  ws.serverClose(3000);
  await ctx.clock.next();
  const ws2 = await acceptWebSocket(ctx);
  await answerSubscribe(ws2, "c", { epoch: "E2", offset: 0, recovered: false, publications: [] });
  assert.deepEqual(errors, [ErrorCode.UNRECOVERABLE_POSITION]);
  ctx.client.close();
});

test("a first subscribe with `since` recovers from that position; early publications wait for the answer", async () => {
  const ctx = setup();
  const ws = await connectWebSocket(ctx);
  const got = [];
  ctx.client.subscribe("c", { since: { epoch: "E", offset: 7 }, onPublication: (p) => got.push(p.offset) });
  await flush();
  const cmd = ws.lastCommand("subscribe");
  assert.deepEqual(cmd.params, { channel: "c", recover: true, epoch: "E", offset: 7 });
  ws.receive(publication("c", 9, 9, "E")); // before the answer: held back
  assert.deepEqual(got, []);
  ws.receive(reply(cmd.id, { epoch: "E", offset: 9, recovered: true, publications: [8, 9].map((o) => ({ channel: "c", data: o, offset: o, epoch: "E" })) }));
  await flush();
  assert.deepEqual(got, [8, 9]);
  ctx.client.close();
});

test("commands in flight are rejected when the connection drops; publishes are kept (the outbox, on by default) and go again with their key after the resubscribe", async () => {
  const ctx = setup();
  const ws = await connectWebSocket(ctx);
  const sub = ctx.client.subscribe("s");
  await answerSubscribe(ws, "s", {});
  const inflight = sub.publish("lost?", { idempotencyKey: "k1" });
  const call = ctx.client.rpc("lost too");
  await flush();
  assert.deepEqual(ws.lastCommand("publish").params, { channel: "s", data: "lost?", idempotency_key: "k1" });
  ws.serverClose(1006);
  await assert.rejects(call, (e) => e.code === ErrorCode.CONNECTION_LOST && e.temporary === true);
  const later = sub.publish("later");
  assert.equal(ctx.client.outbox.size, 2, "both publishes wait in the outbox");
  await ctx.clock.next();
  const ws2 = await acceptWebSocket(ctx);
  assert.equal(ws2.lastCommand("publish"), undefined, "waits for the subscription");
  await answerSubscribe(ws2, "s", {});
  const sent = ws2.commands().filter((c) => c.method === "publish");
  assert.deepEqual(
    sent.map((c) => c.params.data),
    ["lost?", "later"],
    "the one in flight goes again, then the new one, in publish order",
  );
  assert.equal(sent[0].params.idempotency_key, "k1", "again with the same key: the hub counts it once");
  assert.equal(typeof sent[1].params.idempotency_key, "string", "a publish without a key is given one");
  assert.ok(sent[1].params.idempotency_key.length > 0);
  ws2.receive(reply(sent[0].id, { offset: 1, duplicate: true }) + "\n" + reply(sent[1].id, { offset: 2 }));
  assert.deepEqual(await inflight, { offset: 1, duplicate: true });
  assert.deepEqual(await later, { offset: 2 });
  assert.equal(ctx.client.outbox.size, 0);
  ctx.client.close();
});

test("with outbox: false a publish is one command: rejected with CONNECTION_LOST when the connection drops", async () => {
  const ctx = setup({ outbox: false });
  assert.equal(ctx.client.outbox, null);
  const ws = await connectWebSocket(ctx);
  const sub = ctx.client.subscribe("s");
  await answerSubscribe(ws, "s", {});
  const inflight = sub.publish("lost?");
  await flush();
  assert.deepEqual(ws.lastCommand("publish").params, { channel: "s", data: "lost?" }, "no key without the outbox");
  ws.serverClose(1006);
  await assert.rejects(inflight, (e) => e.code === ErrorCode.CONNECTION_LOST && e.temporary === true);
  ctx.client.close();
});

for (const [how, act] of [
  ["a disconnect push with reconnect false", (ws) => ws.receive(disconnectPush(3500, "invalid token", false))],
  ["a close code in 3500-3999 without a push", (ws) => ws.serverClose(3503, "disconnected")],
  ["an application close code in 4500-4999", (ws) => ws.serverClose(4500, "banned")],
]) {
  test(`${how}: closed for good, error and disconnect events, no timer`, async () => {
    const ctx = setup();
    const ws = await connectWebSocket(ctx);
    const sub = ctx.client.subscribe("s");
    await answerSubscribe(ws, "s");
    const inflight = assert.rejects(ctx.client.rpc("never"), (e) => e.code === ErrorCode.CONNECTION_LOST);
    await flush();
    act(ws);
    await flush();
    await inflight;
    assert.equal(ctx.client.state, "closed");
    const [disconnect] = ctx.of("disconnect");
    assert.equal(disconnect.reconnect, false);
    assert.ok(disconnect.code >= 3500);
    assert.equal(ctx.of("error").pop().code, disconnect.code);
    assert.equal(ctx.clock.pending().length, 0, "nothing scheduled");
    await ctx.clock.advance(10 * 60 * 1000);
    assert.equal(ctx.WS.instances.length, 1, "no reconnection");
    assert.equal(sub.state, "subscribing", "kept for a later connect()");
  });
}

test("a disconnect push with reconnect true, and application code 4000: reconnect", async () => {
  const ctx = setup();
  const ws = await connectWebSocket(ctx);
  ws.receive(disconnectPush(4000, "maintenance", true));
  ws.serverClose(4000, "maintenance"); // the close frame that follows is ignored
  await flush();
  assert.deepEqual(ctx.of("disconnect"), [{ code: 4000, reason: "maintenance", reconnect: true }]);
  assert.equal(ctx.client.state, "disconnected");
  await ctx.clock.next();
  await acceptWebSocket(ctx);
  assert.equal(ctx.client.state, "connected");
  ctx.client.close();
});

test("WebSocket heartbeat: a ping every 25 s; one unanswered past its deadline drops the connection", async () => {
  const ctx = setup();
  const ws = await connectWebSocket(ctx);
  const pings = () => ws.commands().filter((c) => c.method === "ping");
  await ctx.clock.advance(25000);
  assert.equal(pings().length, 1);
  assert.equal(pings()[0].params, undefined, "ping has no params");
  ws.receive(reply(pings()[0].id, {}));
  await ctx.clock.advance(25000);
  assert.equal(pings().length, 2);
  // No answer from now on.
  await ctx.clock.advance(25000);
  assert.equal(ctx.client.state, "connected", "25 s without an answer is within the deadline");
  assert.equal(pings().length, 2, "no second ping while one is unanswered");
  await ctx.clock.advance(25000);
  assert.equal(ctx.client.state, "disconnected");
  assert.deepEqual(ctx.of("disconnect"), [{ code: 1006, reason: "no heartbeat from the server", reconnect: true }]);
  assert.ok(ws.closedWith);
  ctx.client.close();
});

test("a throttled timer that fires late gets one round of grace, measured with now()", async () => {
  const ctx = setup();
  const ws = await connectWebSocket(ctx);
  await ctx.clock.advance(25000); // ping sent
  const ping = ws.lastCommand("ping");
  // The tab is in the background: the next tick comes 70 s late, while the answer
  // sits in the queue behind it.
  ctx.clock.jump(70000);
  await ctx.clock.advance(0);
  assert.equal(ctx.client.state, "connected", "a late tick does not drop the connection at once");
  ws.receive(reply(ping.id, {}));
  await ctx.clock.advance(25000);
  assert.equal(ctx.client.state, "connected");
  assert.equal(ws.commands().filter((c) => c.method === "ping").length, 2, "pinging again");
  // Really dead, and the tab still throttled: dropped at the second late tick.
  ctx.clock.jump(70000);
  await ctx.clock.advance(0);
  assert.equal(ctx.client.state, "connected");
  ctx.clock.jump(70000);
  await ctx.clock.advance(0);
  assert.equal(ctx.client.state, "disconnected");
  ctx.client.close();
});

test("the connect result's ping (seconds) sets the ping interval", async () => {
  const ctx = setup();
  const ws = await connectWebSocket(ctx, { client: "c", user: "", v: 1, ping: 10 });
  await ctx.clock.advance(10000);
  assert.equal(ws.commands().filter((c) => c.method === "ping").length, 1);
  ctx.client.close();
});

test("no answer to connect within the timeout: reconnect", async () => {
  const ctx = setup({ transports: ["websocket"], timeout: 4000 });
  ctx.client.connect();
  const ws = ctx.WS.last();
  ws.open();
  ws.receive(JSON.stringify({ push: "future" })); // a message, but no reply
  await ctx.clock.advance(4000);
  assert.equal(ctx.client.state, "disconnected");
  assert.equal(ctx.of("disconnect")[0].reason, "no answer to connect");
  ctx.client.close();
});

test("back online: reconnect at once instead of waiting out the backoff; back in view: ping", async () => {
  const target = new EventTarget();
  const ctx = setup({ lifecycleTarget: target, transports: ["websocket"], minReconnectDelay: 20000 });
  const ws = await connectWebSocket(ctx);
  target.dispatchEvent(new Event("visibilitychange"));
  await flush();
  assert.equal(ws.commands().filter((c) => c.method === "ping").length, 1, "a ping checks the connection");
  ws.serverClose(1006);
  await flush();
  assert.equal(ctx.client.state, "disconnected");
  assert.equal(ctx.WS.instances.length, 1);
  target.dispatchEvent(new Event("online"));
  await flush();
  assert.equal(ctx.WS.instances.length, 2, "no wait for the 10 s backoff");
  assert.equal(ctx.client.state, "connecting");
  ctx.client.close();
  // Closed: the client stops listening.
  target.dispatchEvent(new Event("online"));
  await flush();
  assert.equal(ctx.WS.instances.length, 2);
});
