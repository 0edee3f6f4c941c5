// Gaps in a channel's offsets: the pure Sequencer, and the subscription reading the
// missing range from history and delivering it before anything newer.
import { test } from "node:test";
import assert from "node:assert/strict";

import { MAX_HELD, Sequencer } from "../backchannel.js";
import { flush, reply } from "../test-support/fakes.js";
import { answerSubscribe, connectWebSocket, setup } from "../test-support/setup.js";

const pub = (offset, epoch = "E") => ({ channel: "c", data: offset, offset, epoch });
const offsets = (pubs) => pubs.map((p) => p.offset);

test("in order: each delivered once; a skip holds the newer ones and names the gap", () => {
  const s = new Sequencer("E", 3);
  assert.deepEqual(offsets(s.push(pub(4))), [4]);
  assert.deepEqual(s.push(pub(4)), [], "seen already");
  assert.deepEqual(s.push(pub(7)), []);
  assert.deepEqual(s.push(pub(8)), []);
  assert.deepEqual(s.gap, { epoch: "E", offset: 4, to: 6 });
  // History brings 5 and 6 (and 7 again): all delivered in order, then the held 8.
  const { deliver, lost } = s.filled([pub(5), pub(6), pub(7)], false);
  assert.deepEqual(offsets(deliver), [5, 6, 7, 8]);
  assert.equal(lost, false);
  assert.equal(s.gap, null);
  assert.equal(s.offset, 8);
  assert.deepEqual(offsets(s.push(pub(9))), [9]);
});

test("a dropped push names a gap with nothing held; a part filled leaves the rest", () => {
  const s = new Sequencer("E", 10);
  s.dropped("E", 14);
  assert.deepEqual(s.gap, { epoch: "E", offset: 10, to: 14 });
  s.dropped("E", 9); // older: nothing more missing
  s.dropped("other", 20); // another epoch: not this stream
  assert.deepEqual(s.gap, { epoch: "E", offset: 10, to: 14 });
  assert.deepEqual(s.push(pub(15)), [], "newer waits behind the gap");
  assert.deepEqual(offsets(s.filled([pub(11), pub(12)], false).deliver), [11, 12]);
  assert.deepEqual(s.gap, { epoch: "E", offset: 12, to: 14 });
  assert.deepEqual(offsets(s.filled([pub(13), pub(14)], false).deliver), [13, 14, 15]);
  assert.equal(s.gap, null);
});

test("history without the missing ones: given up, the held delivered, lost reported", () => {
  const s = new Sequencer("E", 1);
  s.push(pub(5));
  const { deliver, lost } = s.filled([], true);
  assert.deepEqual(offsets(deliver), [5]);
  assert.equal(lost, true);
  assert.equal(s.offset, 5);
  assert.equal(s.gap, null);
});

test("a new epoch starts over; publications without offsets pass; too much held gives up", () => {
  const s = new Sequencer("E", 5);
  assert.deepEqual(offsets(s.push(pub(1, "F"))), [1]);
  assert.equal(s.epoch, "F");
  assert.deepEqual(s.push({ channel: "c", data: "x" }), [{ channel: "c", data: "x" }]);
  const t = new Sequencer("E", 0);
  for (let o = 2; o < MAX_HELD + 2; o++) assert.deepEqual(t.push(pub(o)), []);
  const out = t.push(pub(MAX_HELD + 2));
  assert.equal(out.length, MAX_HELD + 1, "all held, in order, then the new one");
  assert.equal(out[0].offset, 2);
  assert.equal(t.gap, null);
  assert.deepEqual(t.lostAt, { epoch: "E", offset: 0 });
});

test("a subscription reads a gap from history and delivers it before anything newer", async () => {
  const ctx = setup();
  const ws = await connectWebSocket(ctx);
  const got = [];
  const sub = ctx.client.subscribe("c", { onPublication: (p) => got.push(p.offset) });
  await answerSubscribe(ws, "c", { epoch: "E", offset: 3 });
  ws.receive(JSON.stringify({ push: "publication", ...pub(4) }));
  ws.receive(JSON.stringify({ push: "publication", ...pub(7) }));
  await flush();
  const history = ws.lastCommand("history");
  assert.deepEqual(history.params, { channel: "c", epoch: "E", offset: 4 });
  ws.receive(JSON.stringify({ push: "publication", ...pub(8) }));
  ws.receive(reply(history.id, { publications: [pub(5), pub(6), pub(7)], epoch: "E", offset: 8 }));
  await flush();
  assert.deepEqual(got, [4, 5, 6, 7, 8]);
  assert.equal(sub.offset, 8);
  ctx.client.close();
});

test("a dropped push: the missing range read from history; without a position, recovery failed", async () => {
  const ctx = setup();
  const ws = await connectWebSocket(ctx);
  const got = [];
  const failed = [];
  ctx.client.subscribe("c", { onPublication: (p) => got.push(p.offset ?? p.data), onRecoveryFailed: (c) => failed.push(c) });
  await answerSubscribe(ws, "c", { epoch: "E", offset: 1 });
  ws.receive(JSON.stringify({ push: "dropped", channel: "c", epoch: "E", offset: 3 }));
  await flush();
  const history = ws.lastCommand("history");
  assert.deepEqual(history.params, { channel: "c", epoch: "E", offset: 1 });
  ws.receive(reply(history.id, { publications: [pub(2), pub(3)], epoch: "E", offset: 3 }));
  await flush();
  assert.deepEqual(got, [2, 3]);
  // History no longer has them: given up, reported.
  ws.receive(JSON.stringify({ push: "dropped", channel: "c", epoch: "E", offset: 6 }));
  await flush();
  const again = ws.lastCommand("history");
  ws.receive(reply(again.id, { publications: [], epoch: "E", offset: 9, recovered: false }));
  await flush();
  assert.deepEqual(failed, [{ channel: "c", epoch: "E", offset: 3, gap: true }]);
  ws.receive(JSON.stringify({ push: "publication", ...pub(7) }));
  await flush();
  assert.deepEqual(got, [2, 3, 7], "past the lost ones, in order");
  ws.receive(JSON.stringify({ push: "dropped", channel: "c" }));
  await flush();
  assert.equal(failed.length, 2, "a channel without history: nothing to read back");
  ctx.client.close();
});

test("a subscribe push: a subscription the application sees, resubscribed with recovery", async () => {
  const ctx = setup();
  const ws = await connectWebSocket(ctx);
  const got = [];
  ctx.client.on("subscription", (sub) => sub.setCallbacks({ onPublication: (p) => got.push(p.offset) }));
  ws.receive(JSON.stringify({ push: "subscribe", channel: "orders:42", epoch: "E", offset: 7 }));
  ws.receive(JSON.stringify({ push: "publication", channel: "orders:42", data: "x", offset: 8, epoch: "E" }));
  await flush();
  const sub = ctx.client.getSubscription("orders:42");
  assert.ok(sub);
  assert.equal(sub.server, true);
  assert.equal(sub.state, "subscribed");
  assert.deepEqual(got, [8]);
  assert.equal(ctx.of("subscription").length, 1);
  // After a reconnect it is resubscribed like the application's own, from its position.
  ws.serverClose(1006);
  await ctx.clock.next();
  const { acceptWebSocket } = await import("../test-support/setup.js");
  const ws2 = await acceptWebSocket(ctx);
  const cmd = await answerSubscribe(ws2, "orders:42", { epoch: "E", offset: 8, recovered: true, publications: [] });
  assert.deepEqual(cmd.params, { channel: "orders:42", recover: true, epoch: "E", offset: 8 });
  ctx.client.close();
});

test("the gap limits are options: a gap past maxHeld is given up, reported", async () => {
  assert.throws(() => setup({ gaps: { maxHeld: 0 } }), TypeError);
  const ctx = setup({ gaps: { maxHeld: 2, maxReads: 1 } });
  const ws = await connectWebSocket(ctx);
  const got = [];
  const failed = [];
  ctx.client.subscribe("c", { onPublication: (p) => got.push(p.offset), onRecoveryFailed: (c) => failed.push(c) });
  await answerSubscribe(ws, "c", { epoch: "E", offset: 0 });
  for (const o of [3, 4, 5]) ws.receive(JSON.stringify({ push: "publication", ...pub(o) }));
  await flush();
  assert.deepEqual(got, [3, 4, 5], "two held, then given up for the third");
  assert.deepEqual(failed, [{ channel: "c", epoch: "E", offset: 0, gap: true }]);
  ctx.client.close();
});
