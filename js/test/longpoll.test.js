// Long polling with fetch: open, poll with ack, batches sent again, sending, leaving.
import { test } from "node:test";
import assert from "node:assert/strict";

import { ErrorCode } from "../backchannel.js";
import { disconnectPush, flush, publication, reply } from "../test-support/fakes.js";
import { URL_LP, acceptLongPoll, pendingPoll, setup } from "../test-support/setup.js";

test("open, poll with ack; a batch sent again is handled once", async () => {
  const ctx = setup({ transports: ["longpoll"], token: "t" });
  const connecting = ctx.client.connect();
  await flush();
  const open = ctx.net.one("POST");
  assert.equal(open.url, URL_LP);
  assert.deepEqual(JSON.parse(open.body), { id: 1, method: "connect", params: { v: 1, token: "t" } });
  open.respond(200, { sid: "S1", ack: 0 });
  await flush();
  pendingPoll(ctx, "S1", 0).respond(200, `{"batch":1}\n` + reply(1, { client: "c", user: "u", v: 1 }));
  await connecting;
  assert.equal(ctx.client.transport, "longpoll");

  const received = [];
  ctx.client.subscribe("news", { onPublication: (p) => received.push(p.data) });
  await flush();
  const send = ctx.net.one("POST");
  assert.equal(send.url, `${URL_LP}?sid=S1`);
  const subscribe = JSON.parse(send.body);
  assert.equal(subscribe.method, "subscribe");
  send.respond(200, { sid: "S1" });
  await flush();

  const batch2 = ["{\"batch\":2}", reply(subscribe.id, {}), publication("news", "a")].join("\n");
  pendingPoll(ctx, "S1", 1).respond(200, batch2);
  await flush();
  assert.deepEqual(received, ["a"]);
  // The answer was lost on the way (as far as the server knows): it sends batch 2 again.
  pendingPoll(ctx, "S1", 2).respond(200, batch2);
  await flush();
  assert.deepEqual(received, ["a"], "batch 2 handled once");
  // Nothing to deliver within the poll timeout: just the batch number.
  pendingPoll(ctx, "S1", 2).respond(200, '{"batch":2}');
  await flush();
  pendingPoll(ctx, "S1", 2).respond(200, ['{"batch":3}', publication("news", "b")].join("\n"));
  await flush();
  assert.deepEqual(received, ["a", "b"]);
  pendingPoll(ctx, "S1", 3);
  ctx.client.close();
});

test("sending: one POST at a time, in order, queued commands merged", async () => {
  const ctx = setup({ transports: ["longpoll"] });
  ctx.client.connect();
  await acceptLongPoll(ctx, "S1");
  const a = ctx.client.rpc("a");
  await flush();
  const first = ctx.net.one("POST");
  const b = ctx.client.rpc("b");
  await flush(); // b and c are separate frames, queued behind the first POST
  const c = ctx.client.send("c");
  await flush();
  assert.equal(ctx.net.open("POST").length, 1, "the second POST waits for the first");
  first.respond(200, { sid: "S1" });
  await flush();
  const second = ctx.net.one("POST");
  const lines = second.body.split("\n").map((l) => JSON.parse(l));
  assert.deepEqual(lines.map((l) => l.method), ["rpc", "send"]);
  second.respond(200, { sid: "S1" });
  const ids = [JSON.parse(first.body).id, lines[0].id, lines[1].id];
  pendingPoll(ctx, "S1", 1).respond(200, ['{"batch":2}', reply(ids[0], { data: 1 }), reply(ids[1], { data: 2 }), reply(ids[2], {})].join("\n"));
  assert.deepEqual(await Promise.all([a, b, c]), [1, 2, undefined]);
  ctx.client.close();
});

test("a poll answered 404 with reconnect: reconnect, no DELETE", async () => {
  const ctx = setup({ transports: ["longpoll"] });
  ctx.client.connect();
  await acceptLongPoll(ctx, "S1");
  pendingPoll(ctx, "S1", 1).respond(404, { error: "unknown session", reconnect: true });
  await flush();
  assert.equal(ctx.client.state, "disconnected");
  assert.deepEqual(ctx.of("disconnect"), [{ code: 1006, reason: "long poll 404: unknown session", reconnect: true }]);
  assert.equal(ctx.net.requests.filter((r) => r.method === "DELETE").length, 0);
  assert.equal(await ctx.clock.next(), 250);
  const open = ctx.net.one("POST");
  assert.equal(open.url, URL_LP, "a new session");
  ctx.client.close();
});

test("close(): the held poll is aborted and the session left with DELETE keepalive", async () => {
  const ctx = setup({ transports: ["longpoll"] });
  ctx.client.connect();
  await acceptLongPoll(ctx, "S1");
  const poll = pendingPoll(ctx, "S1", 1);
  ctx.client.close();
  await flush();
  assert.equal(poll.aborted, true);
  const del = ctx.net.one("DELETE");
  assert.equal(del.url, `${URL_LP}?sid=S1`);
  assert.equal(del.keepalive, true);
  del.respond(200, { sid: "S1" });
  assert.equal(ctx.client.state, "closed");
  assert.equal(ctx.clock.pending().length, 0);
});

test("a disconnect push with reconnect false over long polling: closed for good", async () => {
  const ctx = setup({ transports: ["longpoll"] });
  ctx.client.connect();
  await acceptLongPoll(ctx, "S1");
  pendingPoll(ctx, "S1", 1).respond(200, ['{"batch":2}', disconnectPush(3503, "disconnected", false)].join("\n"));
  await flush();
  assert.equal(ctx.client.state, "closed");
  assert.deepEqual(ctx.of("disconnect"), [{ code: 3503, reason: "disconnected", reconnect: false }]);
  assert.equal(ctx.of("error").pop().code, 3503);
  assert.equal(ctx.net.open("GET").length, 0, "no more polls");
  assert.equal(ctx.net.open("DELETE").length, 1, "the session is freed");
  assert.equal(ctx.clock.pending().length, 0, "no reconnect");
});

test("a poll that fails on the network is tried again with the same ack", async () => {
  const ctx = setup({ transports: ["longpoll"] });
  ctx.client.connect();
  await acceptLongPoll(ctx, "S1");
  pendingPoll(ctx, "S1", 1).fail();
  await flush();
  assert.equal(ctx.net.open("GET").length, 0);
  await ctx.clock.advance(1000);
  pendingPoll(ctx, "S1", 1).fail();
  await ctx.clock.advance(2000);
  pendingPoll(ctx, "S1", 1).respond(200, '{"batch":1}');
  await flush();
  pendingPoll(ctx, "S1", 1);
  assert.equal(ctx.client.state, "connected");
  assert.deepEqual(ctx.of("disconnect"), []);
  ctx.client.close();
});

test("long polling with no answer for 2 x 25 s + slack: the connection counts as lost", async () => {
  const ctx = setup({ transports: ["longpoll"] });
  ctx.client.connect();
  await acceptLongPoll(ctx, "S1");
  // Answers every 20 s keep it alive.
  for (let i = 0; i < 5; i++) {
    await ctx.clock.advance(20000);
    pendingPoll(ctx, "S1", 1).respond(200, '{"batch":1}');
    await flush();
  }
  assert.equal(ctx.client.state, "connected");
  // Then silence: a held poll that never comes back.
  const poll = pendingPoll(ctx, "S1", 1);
  await ctx.clock.advance(50000);
  assert.equal(ctx.client.state, "connected");
  await ctx.clock.advance(25000);
  assert.notEqual(ctx.client.state, "connected");
  assert.equal(poll.aborted, true);
  assert.equal(ctx.of("disconnect")[0].reason, "no heartbeat from the server");
  assert.equal(ctx.net.open("DELETE").length, 1);
  ctx.client.close();
});

test("commands in flight when the session is lost are rejected as temporary", async () => {
  const ctx = setup({ transports: ["longpoll"] });
  ctx.client.connect();
  await acceptLongPoll(ctx, "S1");
  const call = ctx.client.rpc("x");
  await flush();
  ctx.net.one("POST").respond(410, { error: "session closed", reconnect: true });
  await assert.rejects(call, (e) => e.code === ErrorCode.CONNECTION_LOST && e.temporary);
  assert.equal(ctx.client.state, "disconnected");
  ctx.client.close();
});
