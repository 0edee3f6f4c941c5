// Server-Sent Events with EventSource and fetch: the stream, commands by POST, the
// client's own reconnect with recovery, leaving.
import { test } from "node:test";
import assert from "node:assert/strict";

import { ErrorCode } from "../backchannel.js";
import { disconnectPush, flush, publication, reply } from "../test-support/fakes.js";
import { URL_SSE, acceptSse, setup, ssePosts } from "../test-support/setup.js";

test("open: the connect frame in the URL, commands POSTed to the session in order, replies on the stream", async () => {
  const ctx = setup({ transports: ["sse"], token: "t" }, { sse: true });
  const connecting = ctx.client.connect();
  await flush();
  const es = ctx.ES.last();
  assert.ok(es.url.startsWith(`${URL_SSE}?frame=`));
  assert.deepEqual(es.frame(), [{ id: 1, method: "connect", params: { v: 1, token: "t" } }]);
  assert.equal(ctx.net.requests.length, 0, "nothing is POSTed before the session is known");
  es.session("S1");
  es.receive(reply(1, { client: "c", user: "u", v: 1 }));
  await connecting;
  assert.equal(ctx.client.transport, "sse");
  assert.deepEqual(ctx.of("transport"), ["sse"]);

  const received = [];
  ctx.client.subscribe("news", { onPublication: (p) => received.push(p.data) });
  const a = ctx.client.rpc("a");
  await flush();
  const first = ctx.net.one("POST");
  assert.equal(first.url, `${URL_SSE}?sid=S1`);
  assert.deepEqual(first.body.split("\n").map((l) => JSON.parse(l).method), ["subscribe", "rpc"]);
  const b = ctx.client.rpc("b");
  await flush();
  assert.equal(ctx.net.open("POST").length, 1, "the second POST waits for the first");
  first.respond(200, { sid: "S1" });
  await flush();
  ctx.net.one("POST").respond(200, { sid: "S1" });
  const [subscribe, rpcA, rpcB] = ssePosts(ctx, "S1");
  es.receive(reply(subscribe.id, {}));
  es.receive(reply(rpcA.id, { data: 1 }));
  es.receive(publication("news", "hello"));
  es.receive(reply(rpcB.id, { data: 2 }));
  assert.deepEqual(await Promise.all([a, b]), [1, 2]);
  assert.deepEqual(received, ["hello"]);
  ctx.client.close();
});

test("a dropped stream: the client closes the EventSource, leaves, and resubscribes with recovery on a new session", async () => {
  const ctx = setup({ transports: ["sse"] }, { sse: true });
  ctx.client.connect();
  const es = await acceptSse(ctx, "S1");
  const got = [];
  const subscribed = [];
  ctx.client.subscribe("chat", { onPublication: (p) => got.push(p.offset), onSubscribed: (c) => subscribed.push(c) });
  await flush();
  const sub1 = ssePosts(ctx, "S1").find((c) => c.method === "subscribe");
  ctx.net.one("POST").respond(200, { sid: "S1" });
  es.receive(reply(sub1.id, { epoch: "E", offset: 10 }));
  es.receive(publication("chat", "a", 11, "E"), '{"chat":["E",11]}');
  await flush();
  assert.deepEqual(got, [11]);

  es.fail(); // EventSource would reconnect by itself: the client does instead
  await flush();
  assert.equal(es.closed, true, "the EventSource is closed, not left to reconnect");
  assert.equal(ctx.client.state, "disconnected");
  assert.deepEqual(ctx.of("disconnect"), [{ code: 1006, reason: "event stream lost", reconnect: true }]);
  const leave = ctx.net.one("DELETE");
  assert.equal(leave.url, `${URL_SSE}?sid=S1`);
  assert.equal(leave.keepalive, true);
  leave.respond(200, { sid: "S1" });

  await ctx.clock.next(); // the backoff
  assert.equal(ctx.ES.instances.length, 2);
  const es2 = await acceptSse(ctx, "S2");
  await flush();
  const resub = ssePosts(ctx, "S2").find((c) => c.method === "subscribe");
  assert.deepEqual(resub.params, { channel: "chat", recover: true, epoch: "E", offset: 11 });
  ctx.net.one("POST").respond(200, { sid: "S2" });
  // The missed publications come with the reply; 11 again is not delivered twice.
  const pubs = [11, 12].map((o) => ({ channel: "chat", data: o, offset: o, epoch: "E" }));
  es2.receive(reply(resub.id, { recovered: true, epoch: "E", offset: 12, publications: pubs }));
  es2.receive(publication("chat", "c", 13, "E"));
  await flush();
  assert.deepEqual(got, [11, 12, 13]);
  assert.equal(subscribed.at(-1).recovered, true);
  ctx.client.close();
});

test("a disconnect push with reconnect false: the EventSource is closed, the client closed for good", async () => {
  const ctx = setup({ transports: ["sse"] }, { sse: true });
  ctx.client.connect();
  const es = await acceptSse(ctx, "S1");
  es.receive(disconnectPush(3503, "disconnected", false));
  await flush();
  assert.equal(es.closed, true, "EventSource must not reconnect on its own");
  assert.equal(ctx.client.state, "closed");
  assert.deepEqual(ctx.of("disconnect"), [{ code: 3503, reason: "disconnected", reconnect: false }]);
  assert.equal(ctx.ES.instances.length, 1);
  assert.equal(ctx.clock.pending().length, 0, "no reconnect");
});

test("a disconnect push with reconnect true: the client reconnects on a new EventSource", async () => {
  const ctx = setup({ transports: ["sse"] }, { sse: true });
  ctx.client.connect();
  const es = await acceptSse(ctx, "S1");
  es.receive(disconnectPush(3001, "shutting down", true));
  await flush();
  assert.equal(es.closed, true);
  assert.equal(ctx.client.state, "disconnected");
  await ctx.clock.next();
  await acceptSse(ctx, "S2");
  assert.equal(ctx.client.state, "connected");
  assert.equal(ctx.ES.instances.length, 2);
  ctx.client.close();
});

test("a POST answered 404 with reconnect: reconnect, no DELETE", async () => {
  const ctx = setup({ transports: ["sse"] }, { sse: true });
  ctx.client.connect();
  const es = await acceptSse(ctx, "S1");
  const call = ctx.client.rpc("x");
  await flush();
  ctx.net.one("POST").respond(404, { error: "unknown session", reconnect: true });
  await assert.rejects(call, (e) => e.code === ErrorCode.CONNECTION_LOST && e.temporary);
  assert.equal(es.closed, true);
  assert.equal(ctx.client.state, "disconnected");
  assert.deepEqual(ctx.of("disconnect"), [{ code: 1006, reason: "SSE 404: unknown session", reconnect: true }]);
  assert.equal(ctx.net.requests.filter((r) => r.method === "DELETE").length, 0);
  ctx.client.close();
});

test("close() and pagehide leave the session with DELETE keepalive", async () => {
  const ctx = setup({ transports: ["sse"] }, { sse: true });
  ctx.client.connect();
  const es = await acceptSse(ctx, "S1");
  ctx.client.close();
  await flush();
  assert.equal(es.closed, true);
  const del = ctx.net.one("DELETE");
  assert.equal(del.url, `${URL_SSE}?sid=S1`);
  assert.equal(del.keepalive, true);
  assert.equal(ctx.clock.pending().length, 0);

  const page = new EventTarget();
  const other = setup({ transports: ["sse"], lifecycleTarget: page }, { sse: true });
  other.client.connect();
  const es2 = await acceptSse(other, "S9");
  page.dispatchEvent(new Event("pagehide"));
  await flush();
  assert.equal(es2.closed, true);
  const leave = other.net.one("DELETE");
  assert.equal(leave.url, `${URL_SSE}?sid=S9`);
  assert.equal(leave.keepalive, true);
  assert.equal(other.client.state, "disconnected", "a page restored from the cache reconnects");
  other.client.close();
});

test("SSE liveness: pings POSTed every pingInterval (comments are invisible to a page); one unanswered loses the connection", async () => {
  const ctx = setup({ transports: ["sse"], pingInterval: 1000, pingTimeout: 2000 }, { sse: true });
  ctx.client.connect();
  const es = await acceptSse(ctx, "S1");
  await ctx.clock.advance(1000);
  const ping = ctx.net.one("POST");
  assert.equal(JSON.parse(ping.body).method, "ping");
  ping.respond(200, { sid: "S1" });
  es.receive(reply(JSON.parse(ping.body).id, {}));
  await ctx.clock.advance(1000);
  ctx.net.one("POST").respond(200, { sid: "S1" }); // the second ping, never answered
  await ctx.clock.advance(2000);
  assert.notEqual(ctx.client.state, "connected");
  assert.equal(ctx.of("disconnect")[0].reason, "no heartbeat from the server");
  assert.equal(es.closed, true);
  ctx.client.close();
});

test("an EventSource constructor that throws, or none at all: SSE is skipped or fails over", async () => {
  const ctx = setup({ transports: ["sse", "longpoll"] }, { sse: true });
  ctx.ES.throwOnCreate = new Error("blocked by policy");
  ctx.client.connect();
  await flush();
  assert.equal(ctx.net.one("POST").url, "http://hub.test/lp", "long polling at once");
  ctx.client.close();
  // Without EventSource (node, old browsers) SSE is not among the transports.
  const bare = setup({ transports: ["sse", "longpoll"] });
  bare.client.connect();
  await flush();
  assert.equal(bare.net.one("POST").url, "http://hub.test/lp");
  bare.client.close();
});
