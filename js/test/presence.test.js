// The pure presence helper: joins and leaves applied to a snapshot; and a subscription's
// presence over a client: every page of the hub's answer, or only the counts.
import { test } from "node:test";
import assert from "node:assert/strict";

import { ErrorCode, applyPresence, presenceUsers } from "../backchannel.js";
import { flush, reply } from "../test-support/fakes.js";
import { answerSubscribe, connectWebSocket, setup } from "../test-support/setup.js";

const alice = { client: "c1", user: "alice" };
const alice2 = { client: "c2", user: "alice", info: { tab: 2 } };
const bob = { client: "c3", user: "bob" };

test("joins add, leaves remove, in the order received; the snapshot is left as it is", () => {
  const snapshot = { c1: alice };
  const now = applyPresence(snapshot, [
    { type: "join", info: bob },
    { type: "join", info: alice2 },
    { type: "leave", info: alice },
  ]);
  assert.deepEqual(now, { c3: bob, c2: alice2 });
  assert.deepEqual(snapshot, { c1: alice }, "not changed");
  assert.deepEqual(presenceUsers(now), ["alice", "bob"]);
});

test("a join of a client already there replaces its info; a leave of one not there changes nothing", () => {
  const now = applyPresence({ c2: { client: "c2", user: "alice" } }, [
    { type: "join", info: alice2 },
    { type: "leave", info: bob },
    { type: "leave", info: { user: "no client id" } },
  ]);
  assert.deepEqual(now, { c2: alice2 });
});

test("a leave then a join of the same client (a reconnect) leaves it present", () => {
  assert.deepEqual(applyPresence({ c1: alice }, [{ type: "leave", info: alice }, { type: "join", info: alice }]), { c1: alice });
  assert.deepEqual(presenceUsers({}), []);
  assert.deepEqual(presenceUsers({ c1: alice, c2: alice2 }), ["alice"], "a user once, whatever its connections");
});

// Subscription.presence over the client: the hub's pages followed to the last one.

test("presence follows next_cursor until the last page and returns every client", async () => {
  const ctx = setup();
  const ws = await connectWebSocket(ctx);
  const sub = ctx.client.subscribe("room");
  await answerSubscribe(ws, "room");
  const presence = sub.presence();
  await flush();
  const first = ws.lastCommand("presence");
  assert.deepEqual(first.params, { channel: "room" });
  ws.receive(reply(first.id, { clients: { c1: alice, c2: alice2 }, next_cursor: "K2" }));
  await flush();
  const second = ws.lastCommand("presence");
  assert.notEqual(second.id, first.id, "a second page was asked for");
  assert.deepEqual(second.params, { channel: "room", cursor: "K2" });
  ws.receive(reply(second.id, { clients: { c3: bob, ["__proto__"]: { client: "__proto__", user: "eve" } } }));
  const { clients } = await presence;
  assert.deepEqual(Object.keys(clients), ["c1", "c2", "c3", "__proto__"], "every page, in order; no next_cursor: done");
  assert.equal(Object.getPrototypeOf(clients), Object.prototype, "a client id is data");
  assert.deepEqual(clients.c3, bob);
  ctx.client.close();
});

test("presence stops at a cursor that does not move on; count-only answers pass through", async () => {
  const ctx = setup();
  const ws = await connectWebSocket(ctx);
  const sub = ctx.client.subscribe("room");
  await answerSubscribe(ws, "room");
  const presence = sub.presence();
  await flush();
  ws.receive(reply(ws.lastCommand("presence").id, { clients: { c1: alice }, next_cursor: "K" }));
  await flush();
  const again = ws.lastCommand("presence");
  ws.receive(reply(again.id, { clients: { c1: alice }, next_cursor: "K" }));
  assert.deepEqual(await presence, { clients: { c1: alice } });
  const counted = sub.presence();
  await flush();
  ws.receive(reply(ws.lastCommand("presence").id, { count: 3, users: 2 }));
  assert.deepEqual(await counted, { count: 3, users: 2 });
  ctx.client.close();
});

test("presenceStats asks the hub to count only, and counts a list itself if one comes", async () => {
  const ctx = setup();
  const ws = await connectWebSocket(ctx);
  const sub = ctx.client.subscribe("room");
  await answerSubscribe(ws, "room");
  const stats = sub.presenceStats();
  await flush();
  const call = ws.lastCommand("presence");
  assert.deepEqual(call.params, { channel: "room", count_only: true });
  ws.receive(reply(call.id, { count: 1200, users: 7 }));
  assert.deepEqual(await stats, { count: 1200, users: 7 });
  const listed = sub.presenceStats();
  await flush();
  ws.receive(reply(ws.lastCommand("presence").id, { clients: { c1: alice, c2: alice2, c3: bob } }));
  assert.deepEqual(await listed, { count: 3, users: 2 });
  sub.unsubscribe();
  await assert.rejects(sub.presenceStats(), (e) => e.code === ErrorCode.SUBSCRIPTION_CLOSED);
  ctx.client.close();
});
