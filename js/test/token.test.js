// Tokens: getToken before connecting, refresh before expiry, 109 on connect, 3004,
// channel tokens per connection.
import { test } from "node:test";
import assert from "node:assert/strict";

import { ErrorCode } from "../backchannel.js";
import { disconnectPush, errorReply, flush, reply } from "../test-support/fakes.js";
import { acceptWebSocket, answerSubscribe, setup } from "../test-support/setup.js";

/** A getToken that hands out t1, t2, ... and counts its calls. */
function tokens() {
  const fn = async () => `t${++fn.calls}`;
  fn.calls = 0;
  return fn;
}

test("without a token, getToken is asked before connecting", async () => {
  const getToken = tokens();
  const ctx = setup({ getToken });
  const connecting = ctx.client.connect();
  await flush();
  const ws = ctx.WS.last();
  ws.open();
  assert.deepEqual(ws.lastCommand("connect").params, { v: 1, token: "t1" });
  ws.receive(reply(ws.lastCommand("connect").id, { client: "c", user: "u", v: 1 }));
  await connecting;
  assert.equal(getToken.calls, 1);
  ctx.client.close();
});

test("refresh at 90% of the token's remaining time, then again after each refresh", async () => {
  const getToken = tokens();
  const ctx = setup({ token: "t0", getToken, pingInterval: 3_600_000 });
  ctx.client.connect();
  const nowS = ctx.clock.now / 1000;
  const ws = await acceptWebSocket(ctx, { client: "c", user: "u", v: 1, expires: nowS + 100 });
  assert.equal(ctx.client.expires, nowS + 100);
  await ctx.clock.advance(89999);
  assert.equal(getToken.calls, 0);
  assert.equal(ws.lastCommand("refresh"), undefined);
  await ctx.clock.advance(1);
  assert.equal(getToken.calls, 1);
  const refresh = ws.lastCommand("refresh");
  assert.deepEqual(refresh.params, { token: "t1" });
  ws.receive(reply(refresh.id, { expires: nowS + 90 + 200 }));
  await flush();
  assert.equal(ctx.client.expires, nowS + 290);
  await ctx.clock.advance(179999);
  assert.equal(getToken.calls, 1);
  await ctx.clock.advance(1);
  assert.equal(getToken.calls, 2);
  assert.deepEqual(ws.lastCommand("refresh").params, { token: "t2" });
  assert.equal(ctx.client.state, "connected");
  ctx.client.close();
});

test("the hub's ttl is counted on the local clock: a clock far off refreshes on time", async () => {
  const getToken = tokens();
  const ctx = setup({ token: "t0", getToken, pingInterval: 3_600_000 });
  ctx.client.connect();
  // By this machine's clock the token expired an hour ago; the hub says 100 s are left.
  const nowS = ctx.clock.now / 1000;
  const ws = await acceptWebSocket(ctx, { client: "c", user: "u", v: 1, expires: nowS - 3600, ttl: 100 });
  await ctx.clock.advance(89999);
  assert.equal(getToken.calls, 0);
  await ctx.clock.advance(1);
  assert.equal(getToken.calls, 1);
  assert.deepEqual(ws.lastCommand("refresh").params, { token: "t1" });
  ctx.client.close();
});

test("a refresh that fails is reported and tried again", async () => {
  const getToken = tokens();
  const ctx = setup({ token: "t0", getToken, pingInterval: 3_600_000 });
  ctx.client.connect();
  const nowS = ctx.clock.now / 1000;
  const ws = await acceptWebSocket(ctx, { client: "c", user: "u", v: 1, expires: nowS + 100 });
  await ctx.clock.advance(90000);
  ws.receive(errorReply(ws.lastCommand("refresh").id, 109, "token expired"));
  await flush();
  assert.equal(ctx.of("error").pop().code, 109);
  assert.equal(ctx.client.state, "connected");
  await ctx.clock.advance(2000); // 1 s * 2**1
  assert.deepEqual(ws.lastCommand("refresh").params, { token: "t2" });
  ctx.client.close();
});

test("a throttled refresh timer: the next message from the server starts the overdue refresh", async () => {
  const getToken = tokens();
  const ctx = setup({ token: "t0", getToken, pingInterval: 3_600_000 });
  ctx.client.connect();
  const nowS = ctx.clock.now / 1000;
  const ws = await acceptWebSocket(ctx, { client: "c", user: "u", v: 1, expires: nowS + 100 });
  ctx.clock.jump(95000); // the timer has not run (a background tab)
  ws.receive(JSON.stringify({ push: "join", channel: "none", info: { client: "x", user: "y" } }));
  await flush();
  assert.equal(getToken.calls, 1);
  assert.deepEqual(ws.lastCommand("refresh").params, { token: "t1" });
  ctx.client.close();
});

test("connect answered 109: a new token, and connect again on the same connection", async () => {
  const getToken = tokens();
  const ctx = setup({ token: "old", getToken });
  const connecting = ctx.client.connect();
  const ws = ctx.WS.last();
  ws.open();
  await flush();
  ws.receive(errorReply(ws.lastCommand("connect").id, 109, "token expired"));
  await flush();
  assert.equal(ctx.WS.instances.length, 1, "same connection");
  const again = ws.lastCommand("connect");
  assert.deepEqual(again.params, { v: 1, token: "t1" });
  ws.receive(reply(again.id, { client: "c", user: "u", v: 1 }));
  await connecting;
  assert.equal(ctx.client.state, "connected");
  ctx.client.close();
});

test("connect answered 109 without getToken: closed, and connect() rejects", async () => {
  const ctx = setup({ token: "old" });
  const connecting = ctx.client.connect();
  const ws = ctx.WS.last();
  ws.open();
  await flush();
  ws.receive(errorReply(ws.lastCommand("connect").id, 109, "token expired"));
  await assert.rejects(connecting, (e) => e.code === ErrorCode.TOKEN_EXPIRED);
  assert.equal(ctx.client.state, "closed");
  assert.equal(ctx.of("error")[0].code, 109);
  assert.ok(ws.closedWith);
  assert.equal(ctx.clock.pending().length, 0);
});

test("disconnect 3004 (token expired): reconnect with a new token", async () => {
  const getToken = tokens();
  const ctx = setup({ token: "t0", getToken, pingInterval: 3_600_000 });
  ctx.client.connect();
  const ws = await acceptWebSocket(ctx);
  ws.receive(disconnectPush(3004, "token expired", true));
  await flush();
  assert.equal(ctx.client.state, "disconnected");
  await ctx.clock.next();
  assert.equal(getToken.calls, 1);
  const ws2 = ctx.WS.last();
  assert.notEqual(ws2, ws);
  ws2.open();
  assert.deepEqual(ws2.lastCommand("connect").params, { v: 1, token: "t1" });
  ctx.client.close();
});

test("getToken giving no token closes the client (unauthorized)", async () => {
  const ctx = setup({ getToken: async () => "" });
  const connecting = ctx.client.connect();
  await assert.rejects(connecting, (e) => e.code === ErrorCode.UNAUTHORIZED);
  assert.equal(ctx.client.state, "closed");
  assert.equal(ctx.WS.instances.length, 0);
});

test("getToken failing: an error event, then another try after the backoff", async () => {
  let calls = 0;
  const ctx = setup({
    getToken: async () => {
      calls++;
      if (calls === 1) throw new Error("auth server down");
      return "t";
    },
  });
  ctx.client.connect();
  await flush();
  assert.equal(ctx.of("error")[0].message, "auth server down");
  assert.equal(ctx.client.state, "disconnected");
  assert.equal(await ctx.clock.next(), 250);
  const ws = ctx.WS.last();
  ws.open();
  assert.deepEqual(ws.lastCommand("connect").params, { v: 1, token: "t" });
  ctx.client.close();
});

test("a channel's getToken is asked once per connection, with the channel and client id", async () => {
  const asked = [];
  const ctx = setup();
  ctx.client.connect();
  const ws = await acceptWebSocket(ctx, { client: "c1", user: "u", v: 1 });
  ctx.client.subscribe("$private", {
    getToken: async (c) => {
      asked.push(c);
      return `ct-${c.client}`;
    },
  });
  const first = await answerSubscribe(ws, "$private", {});
  assert.equal(first.params.token, "ct-c1");
  ws.serverClose(1006);
  await ctx.clock.next();
  const ws2 = await acceptWebSocket(ctx, { client: "c2", user: "u", v: 1 });
  const second = await answerSubscribe(ws2, "$private", {});
  assert.equal(second.params.token, "ct-c2");
  assert.deepEqual(asked, [
    { channel: "$private", client: "c1" },
    { channel: "$private", client: "c2" },
  ]);
  ctx.client.close();
});

test("disconnect 3500 (invalid token): getToken asked once for a new one, then given up; each refusal an event", async () => {
  const getToken = tokens();
  const ctx = setup({ token: "t0", getToken, pingInterval: 3_600_000 });
  ctx.client.connect();
  const ws = await acceptWebSocket(ctx);
  ws.receive(disconnectPush(3500, "invalid token", false));
  await flush();
  assert.equal(ctx.client.state, "disconnected", "not closed: one more try");
  assert.deepEqual(ctx.of("token"), [{ code: 3500, reason: "invalid token", retry: true }]);
  assert.equal(ctx.of("disconnect")[0].reconnect, true);
  await ctx.clock.next();
  assert.equal(getToken.calls, 1);
  const ws2 = ctx.WS.last();
  ws2.open();
  await flush();
  assert.deepEqual(ws2.lastCommand("connect").params, { v: 1, token: "t1" });
  // Refused again: the client gives up.
  ws2.receive(disconnectPush(3500, "invalid token", false));
  await flush();
  assert.equal(ctx.client.state, "closed");
  assert.deepEqual(ctx.of("token")[1], { code: 3500, reason: "invalid token", retry: false });
  assert.equal(getToken.calls, 1);
});

test("a new token that connects earns another retry later", async () => {
  const getToken = tokens();
  const ctx = setup({ token: "t0", getToken, pingInterval: 3_600_000 });
  ctx.client.connect();
  let ws = await acceptWebSocket(ctx);
  for (let round = 1; round <= 2; round++) {
    ws.receive(disconnectPush(3500, "invalid token", false));
    await flush();
    assert.equal(ctx.client.state, "disconnected", `round ${round}`);
    await ctx.clock.next();
    ws = await acceptWebSocket(ctx);
    assert.equal(ctx.client.state, "connected");
  }
  assert.deepEqual(ctx.of("token").map((t) => t.retry), [true, true]);
  ctx.client.close();
});

test("without getToken, 3500 closes at once, and says so in a token event", async () => {
  const ctx = setup({ token: "t0" });
  ctx.client.connect();
  const ws = await acceptWebSocket(ctx);
  ws.receive(disconnectPush(3500, "invalid token", false));
  await flush();
  assert.equal(ctx.client.state, "closed");
  assert.deepEqual(ctx.of("token"), [{ code: 3500, reason: "invalid token", retry: false }]);
});

test("connect answered 109 again with the new token: given up, not a loop; both refusals are events", async () => {
  const getToken = tokens();
  const ctx = setup({ token: "old", getToken });
  const connecting = ctx.client.connect();
  const ws = ctx.WS.last();
  ws.open();
  await flush();
  ws.receive(errorReply(ws.lastCommand("connect").id, 109, "token expired", true));
  await flush();
  ws.receive(errorReply(ws.lastCommand("connect").id, 109, "token expired", true));
  await assert.rejects(connecting, (e) => e.code === ErrorCode.TOKEN_EXPIRED);
  assert.equal(ctx.client.state, "closed");
  assert.deepEqual(ctx.of("token").map((t) => [t.code, t.retry]), [[109, true], [109, false]]);
  assert.equal(getToken.calls, 1);
  assert.equal(ctx.clock.pending().length, 0, "no reconnect scheduled");
});
