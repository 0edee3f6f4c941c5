// The pure outbox: bounded, in order, its overflow policy, kept across a reload.
import { test } from "node:test";
import assert from "node:assert/strict";

import { OUTBOX_MAX, Outbox, newKey } from "../backchannel.js";

const entry = (key, channel = "c") => ({ key, channel, data: { key }, created: 1 });

/** A Storage over a Map (localStorage's interface). */
function memoryStorage() {
  const items = new Map();
  return {
    items,
    getItem: (k) => (items.has(k) ? items.get(k) : null),
    setItem: (k, v) => items.set(k, String(v)),
    removeItem: (k) => items.delete(k),
  };
}

test("entries keep their order; removing by key; the same key is kept once", () => {
  const box = new Outbox();
  assert.equal(box.max, OUTBOX_MAX);
  assert.equal(box.policy, "reject-new");
  for (const k of ["a", "b", "c"]) assert.deepEqual(box.add(entry(k, k === "b" ? "other" : "c")), { accepted: true, dropped: null });
  assert.deepEqual(box.add(entry("a")), { accepted: true, dropped: null }, "a key already waiting");
  assert.equal(box.size, 3);
  assert.deepEqual(box.entries().map((e) => e.key), ["a", "b", "c"]);
  assert.deepEqual(box.entries("c").map((e) => e.key), ["a", "c"]);
  assert.equal(box.remove("b"), true);
  assert.equal(box.remove("b"), false);
  assert.equal(box.has("a"), true);
  assert.deepEqual(box.entries().map((e) => e.key), ["a", "c"]);
});

test("full, reject-new refuses the newest; drop-oldest drops the oldest for it", () => {
  const refusing = new Outbox({ max: 2 });
  refusing.add(entry("a"));
  refusing.add(entry("b"));
  assert.deepEqual(refusing.add(entry("c")), { accepted: false, dropped: null });
  assert.deepEqual(refusing.entries().map((e) => e.key), ["a", "b"]);

  const dropping = new Outbox({ max: 2, policy: "drop-oldest" });
  dropping.add(entry("a"));
  dropping.add(entry("b"));
  const { accepted, dropped } = dropping.add(entry("c"));
  assert.equal(accepted, true);
  assert.equal(dropped?.key, "a");
  assert.deepEqual(dropping.entries().map((e) => e.key), ["b", "c"]);
});

test("bad options are refused", () => {
  assert.throws(() => new Outbox({ max: 0 }), TypeError);
  assert.throws(() => new Outbox({ policy: "keep-all" }), TypeError);
});

test("with a storage, the outbox survives a reload; a damaged item is dropped", () => {
  const storage = memoryStorage();
  const before = new Outbox({ storage, storageKey: "k" });
  before.add(entry("a"));
  before.add(entry("b"));
  before.remove("a");
  const after = new Outbox({ storage, storageKey: "k" });
  assert.deepEqual(after.entries(), [entry("b")]);
  after.remove("b");
  assert.equal(storage.items.has("k"), false, "an empty outbox leaves no item");

  storage.setItem("k", "{not json");
  assert.equal(new Outbox({ storage, storageKey: "k" }).size, 0);
  storage.setItem("k", JSON.stringify([entry("x"), { key: 5 }, entry("y"), entry("z")]));
  assert.deepEqual(new Outbox({ storage, storageKey: "k", max: 2 }).entries().map((e) => e.key), ["y", "z"], "the newest kept");
});

test("keys are unique", () => {
  const keys = new Set(Array.from({ length: 100 }, () => newKey()));
  assert.equal(keys.size, 100);
});

// ---------------------------------------------------------------------------------------
// The client's outbox: at least once, with the same key; each publish's fate told.

import { ErrorCode } from "../backchannel.js";
import { errorReply, flush, reply } from "../test-support/fakes.js";
import { acceptWebSocket, answerSubscribe, connectWebSocket, setup } from "../test-support/setup.js";

const publishes = (ws) => ws.commands().filter((c) => c.method === "publish");

test("publishes made while disconnected, or unanswered when it drops, go again with their keys", async () => {
  const ctx = setup({ outbox: true, transports: ["websocket"] });
  const ws = await connectWebSocket(ctx);
  const sub = ctx.client.subscribe("c");
  await answerSubscribe(ws, "c", { epoch: "E", offset: 0 });
  const first = sub.publish("one", { idempotencyKey: "k1" });
  await flush();
  assert.deepEqual(publishes(ws)[0].params, { channel: "c", data: "one", idempotency_key: "k1" });
  ws.serverClose(1006); // no answer to it
  await flush();
  const offline = [sub.publish("two"), sub.publish("three")];
  await flush();
  assert.equal(ctx.client.outbox.size, 3);
  await ctx.clock.next();
  const ws2 = await acceptWebSocket(ctx);
  assert.equal(publishes(ws2).length, 0, "not before the subscription is back");
  await answerSubscribe(ws2, "c", { epoch: "E", offset: 0, recovered: true, publications: [] });
  const sent = publishes(ws2);
  assert.deepEqual(sent.map((c) => c.params.data), ["one", "two", "three"], "in order");
  assert.equal(sent[0].params.idempotency_key, "k1");
  assert.ok(sent[1].params.idempotency_key && sent[1].params.idempotency_key !== sent[2].params.idempotency_key);
  // The first had counted already: the hub says duplicate, it is acknowledged all the same.
  ws2.receive(reply(sent[0].id, { offset: 1, epoch: "E", duplicate: true }));
  ws2.receive(reply(sent[1].id, { offset: 2, epoch: "E" }));
  ws2.receive(errorReply(sent[2].id, 103, "permission denied"));
  assert.deepEqual(await first, { offset: 1, epoch: "E", duplicate: true });
  assert.deepEqual(await offline[0], { offset: 2, epoch: "E" });
  await assert.rejects(offline[1], (e) => e.code === 103);
  assert.equal(ctx.client.outbox.size, 0);
  const fates = ctx.of("outbox").map((f) => [f.status, f.data, f.error?.code]);
  assert.deepEqual(fates, [
    ["queued", "one", undefined],
    ["queued", "two", undefined],
    ["queued", "three", undefined],
    ["acknowledged", "one", undefined],
    ["acknowledged", "two", undefined],
    ["refused", "three", 103],
  ]);
  ctx.client.close();
});

test("a full outbox: reject-new refuses the publish, drop-oldest drops the oldest; both told", async () => {
  const ctx = setup({ outbox: { max: 2 } });
  const sub = ctx.client.subscribe("c");
  const kept = [sub.publish(1), sub.publish(2)];
  await assert.rejects(sub.publish(3), (e) => e.code === ErrorCode.OUTBOX_FULL && e.temporary);
  assert.deepEqual(ctx.of("outbox").map((f) => [f.status, f.data]), [["queued", 1], ["queued", 2], ["dropped", 3]]);

  const ctx2 = setup({ outbox: { max: 2, policy: "drop-oldest" } });
  const sub2 = ctx2.client.subscribe("c");
  const oldest = sub2.publish(1);
  sub2.publish(2).catch(() => {});
  sub2.publish(3).catch(() => {});
  await assert.rejects(oldest, (e) => e.code === ErrorCode.OUTBOX_FULL);
  assert.deepEqual(ctx2.client.outbox.entries().map((e) => e.data), [2, 3]);
  assert.deepEqual(ctx2.of("outbox").at(-1).status, "dropped");
  for (const p of kept) p.catch(() => {});
});

test("kept across a reload: a new client sends the stored publishes once subscribed", async () => {
  const storage = memoryStorage();
  const before = setup({ outbox: { storage } });
  before.client.subscribe("c").publish("kept", { idempotencyKey: "k9" }).catch(() => {});
  await flush();
  // The page reloads: a new client, the same storage.
  const ctx = setup({ outbox: { storage } });
  assert.equal(ctx.client.outbox.size, 1);
  const ws = await connectWebSocket(ctx);
  ctx.client.subscribe("c");
  await answerSubscribe(ws, "c", { epoch: "E", offset: 0 });
  const [cmd] = publishes(ws);
  assert.deepEqual(cmd.params, { channel: "c", data: "kept", idempotency_key: "k9" });
  ws.receive(reply(cmd.id, { offset: 1, epoch: "E" }));
  await flush();
  assert.deepEqual(ctx.of("outbox").map((f) => [f.status, f.key]), [["acknowledged", "k9"]]);
  assert.equal(storage.items.size, 0);
  ctx.client.close();
});

test("unsubscribing refuses the channel's kept publishes; data the hub would refuse is never kept", async () => {
  const ctx = setup({ outbox: true });
  const sub = ctx.client.subscribe("c");
  const kept = sub.publish("x");
  await assert.rejects(sub.publish(NaN), (e) => e.code === ErrorCode.BAD_ARGUMENT);
  sub.unsubscribe();
  await assert.rejects(kept, (e) => e.code === ErrorCode.SUBSCRIPTION_CLOSED);
  assert.equal(ctx.client.outbox.size, 0);
  assert.equal(ctx.of("outbox").at(-1).status, "refused");
});
