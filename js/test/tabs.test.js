// Tabs sharing one connection: which tab wants which channel (pure), and a leader tab's
// connection used by another tab's client, handed over when the leader's tab closes.
import { test } from "node:test";
import assert from "node:assert/strict";

import { ChannelCounts, Client, resetTransportMemory } from "../backchannel.js";
import { FakeClock, TabWorld, flush, makeWebSocket, publication, reply } from "../test-support/fakes.js";

const URL_WS = "ws://hub.test/ws";

test("channels are counted per connection: left only when none wants them", () => {
  const counts = new ChannelCounts();
  assert.equal(counts.add("a", "tab1"), true, "the first wants it: subscribe");
  assert.equal(counts.add("a", "tab2"), false);
  assert.equal(counts.add("a", "tab2"), false, "twice counts once");
  assert.equal(counts.add("b", "tab2"), true);
  assert.deepEqual(counts.conns("a").sort(), ["tab1", "tab2"]);
  assert.equal(counts.remove("a", "tab1"), false, "tab2 still wants it");
  assert.equal(counts.remove("a", "tab1"), false, "not counted any more");
  assert.deepEqual(counts.removeConn("tab2").sort(), ["a", "b"], "its tab went: both are left");
  assert.deepEqual(counts.channels(), []);
  counts.add("c", "tab1");
  counts.add("c", "tab3");
  assert.deepEqual(counts.removeChannel("c").sort(), ["tab1", "tab3"], "the hub ended it: who to tell");
  assert.equal(counts.has("c", "tab1"), false);
});

function tabs() {
  resetTransportMemory();
  const world = new TabWorld();
  const clock = new FakeClock();
  const WS = makeWebSocket();
  const open = (name) =>
    new Client(URL_WS, {
      WebSocket: WS,
      transports: ["websocket"],
      setTimeout: clock.setTimeout,
      clearTimeout: clock.clearTimeout,
      now: clock.dateNow,
      random: () => 0.5,
      lifecycleTarget: null,
      token: "T",
      shareTabs: world.tab(name),
    });
  return { world, clock, WS, open };
}

/** Lets messages between tabs (a turn each) and promise chains run. */
const settle = () => flush(30);

async function accept(ws, client = "c1") {
  ws.open();
  await settle();
  ws.receive(reply(ws.lastCommand("connect").id, { client, user: "u" }));
  await settle();
}

function commands(ws, method) {
  return ws.commands().filter((c) => c.method === method);
}

test("two tabs, one connection: subscribed once, publications routed to each tab, a follower's publish goes through the leader", async () => {
  const { WS, open } = tabs();
  const a = open("A");
  const connectedA = a.connect();
  await settle();
  assert.equal(a.leader, true);
  assert.equal(WS.instances.length, 1);
  await accept(WS.last());
  await connectedA;
  assert.equal(WS.last().lastCommand("connect").params.token, "T", "the leader's connection has the token");
  const b = open("B");
  await b.connect();
  assert.equal(b.leader, false);
  assert.equal(WS.instances.length, 1, "the follower opened no connection");
  assert.equal(b.clientId, "c1");
  assert.equal(b.transport, "tab");

  const got = { a: [], b: [] };
  const subA = a.subscribe("c", { onPublication: (p) => got.a.push(p.data) });
  const subB = b.subscribe("c", { onPublication: (p) => got.b.push(p.data) });
  const ws = WS.last();
  await settle();
  assert.equal(commands(ws, "subscribe").length, 1, "one subscribe for both tabs");
  ws.receive(reply(commands(ws, "subscribe")[0].id, { epoch: "E", offset: 0 }));
  await settle();
  await subA.ready();
  await subB.ready();
  assert.equal(subB.offset, 0);
  ws.receive(publication("c", "one", 1, "E") + "\n" + publication("c", "two", 2, "E"));
  await settle();
  assert.deepEqual(got, { a: ["one", "two"], b: ["one", "two"] });

  const fate = b.subscribe("d", {});
  await settle();
  ws.receive(reply(commands(ws, "subscribe").find((c) => c.params.channel === "d").id, {}));
  await settle();
  await fate.ready();
  assert.deepEqual(got, { a: ["one", "two"], b: ["one", "two"] }, "only the tab that wants a channel gets it");

  const published = subB.publish("from b", { idempotencyKey: "kb" });
  await settle();
  const pub = commands(ws, "publish").pop();
  assert.deepEqual(pub.params, { channel: "c", data: "from b", idempotency_key: "kb" });
  ws.receive(reply(pub.id, { offset: 3, epoch: "E" }));
  assert.deepEqual(await published, { offset: 3, epoch: "E" });
  assert.equal(b.outbox.size, 0);

  subB.unsubscribe();
  await settle();
  assert.equal(commands(ws, "unsubscribe").length, 0, "tab A still wants it");
  subA.unsubscribe();
  await settle();
  assert.deepEqual(commands(ws, "unsubscribe").map((c) => c.params.channel), ["c"], "left once no tab wants it");
  a.close();
  b.close();
});

test("the leader's tab closes: the follower takes over, connects, and recovers from its own position", async () => {
  const { world, clock, WS, open } = tabs();
  const a = open("A");
  const connectedA = a.connect();
  await settle();
  await accept(WS.last());
  await connectedA;
  const b = open("B");
  await b.connect();
  const got = [];
  const sub = b.subscribe("c", { onPublication: (p) => got.push(p.offset) });
  const ws1 = WS.last();
  await settle();
  ws1.receive(reply(commands(ws1, "subscribe")[0].id, { epoch: "E", offset: 4 }));
  ws1.receive(publication("c", 5, 5, "E"));
  await settle();
  assert.deepEqual(got, [5]);

  world.kill("A"); // the leader's tab is gone (its lock passes to B)
  await settle();
  assert.equal(b.leader, true);
  assert.equal(WS.instances.length, 2, "the new leader connects");
  const ws2 = WS.last();
  await accept(ws2, "c2");
  await clock.advance(1000); // the client's backoff before it reconnects to the new leader
  await settle();
  assert.equal(b.state, "connected");
  assert.equal(b.clientId, "c2");
  const subscribe = commands(ws2, "subscribe")[0];
  assert.deepEqual(subscribe.params, { channel: "c" }, "the leader subscribes afresh ...");
  ws2.receive(reply(subscribe.id, { epoch: "E", offset: 8 }));
  ws2.receive(publication("c", 9, 9, "E")); // live, while the missed ones are read
  await settle();
  const read = commands(ws2, "history")[0];
  assert.deepEqual(read.params, { channel: "c", epoch: "E", offset: 5 }, "... and reads what the tab missed");
  const pubs = [6, 7, 8, 9].map((o) => ({ channel: "c", data: o, offset: o, epoch: "E" }));
  ws2.receive(reply(read.id, { publications: pubs, epoch: "E", offset: 9, recovered: true }));
  await settle();
  assert.deepEqual(got, [5, 6, 7, 8, 9], "nothing missed, nothing twice, in order");
  assert.equal(sub.state, "subscribed");
  b.close();
});

test("a follower's rpc and presence go through the leader; its tab closing leaves the channels only it wanted", async () => {
  const { world, WS, open } = tabs();
  const a = open("A");
  const connectedA = a.connect();
  await settle();
  await accept(WS.last());
  await connectedA;
  const b = open("B");
  await b.connect();
  const ws = WS.last();
  const sum = b.rpc("sum", [1, 2]);
  await settle();
  const rpc = commands(ws, "rpc")[0];
  assert.deepEqual(rpc.params, { method: "sum", data: [1, 2] });
  ws.receive(reply(rpc.id, { data: 3 }));
  assert.equal(await sum, 3);

  const sub = b.subscribe("only-b", {});
  a.subscribe("both", {});
  b.subscribe("both", {});
  await settle();
  for (const cmd of commands(ws, "subscribe")) ws.receive(reply(cmd.id, {}));
  await settle();
  await sub.ready();
  const who = sub.presence();
  await settle();
  ws.receive(reply(commands(ws, "presence")[0].id, { clients: { c1: { client: "c1", user: "u" } } }));
  assert.deepEqual(await who, { clients: { c1: { client: "c1", user: "u" } } });

  world.kill("B"); // the follower's tab closes, without a word: its lock says so
  await settle();
  assert.deepEqual(commands(ws, "unsubscribe").map((c) => c.params.channel), ["only-b"], "the leader's tab still wants 'both'");
  a.close();
});

test("a follower's publish in flight when the leader goes is sent again, with its key, to the new leader", async () => {
  const { world, clock, WS, open } = tabs();
  const a = open("A");
  const connectedA = a.connect();
  await settle();
  await accept(WS.last());
  await connectedA;
  const b = open("B");
  const c = open("C");
  await b.connect();
  await c.connect();
  const sub = c.subscribe("chat", {});
  const ws1 = WS.last();
  await settle();
  ws1.receive(reply(commands(ws1, "subscribe")[0].id, {}));
  await settle();
  const published = sub.publish("hello");
  await settle();
  const first = commands(ws1, "publish")[0];
  assert.equal(typeof first.params.idempotency_key, "string");

  world.kill("A"); // unanswered: the leader's tab closed
  await settle();
  const leaders = [b.leader, c.leader];
  assert.deepEqual(leaders.sort(), [false, true], "one tab took over");
  const ws2 = WS.last();
  assert.notEqual(ws2, ws1);
  await accept(ws2, "c2");
  await clock.advance(1000);
  await settle();
  ws2.receive(reply(commands(ws2, "subscribe")[0].id, {}));
  await settle();
  const again = commands(ws2, "publish")[0];
  assert.deepEqual(again.params, first.params, "the same publish, with the same key");
  ws2.receive(reply(again.id, { offset: 0, duplicate: true }));
  assert.deepEqual(await published, { offset: 0, duplicate: true });
  assert.equal(c.outbox.size, 0);
  b.close();
  c.close();
});

test("a subscription the server makes reaches every tab's client, as its `subscription` event", async () => {
  const { WS, open } = tabs();
  const a = open("A");
  const connectedA = a.connect();
  await settle();
  await accept(WS.last());
  await connectedA;
  const b = open("B");
  await b.connect();
  const got = { a: [], b: [] };
  for (const [name, client] of [["a", a], ["b", b]]) {
    client.on("subscription", (sub) => sub.setCallbacks({ onPublication: (p) => got[name].push([sub.channel, p.offset]) }));
  }
  const ws = WS.last();
  ws.receive(JSON.stringify({ push: "subscribe", channel: "srv", epoch: "E", offset: 3 }) + "\n" + publication("srv", "x", 4, "E"));
  await settle();
  assert.deepEqual(got, { a: [["srv", 4]], b: [["srv", 4]] });
  assert.equal(b.getSubscription("srv").server, true);
  assert.equal(b.getSubscription("srv").offset, 4);
  b.getSubscription("srv").unsubscribe();
  a.getSubscription("srv").unsubscribe();
  await settle();
  assert.deepEqual(commands(ws, "unsubscribe").map((c) => c.params.channel), ["srv"], "left once no tab wants it");
  a.close();
  b.close();
});

test("closing the leader's client hands the connection to another tab", async () => {
  const { WS, open } = tabs();
  const a = open("A");
  const connectedA = a.connect();
  await settle();
  await accept(WS.last());
  await connectedA;
  const b = open("B");
  await b.connect();
  a.close();
  await settle();
  assert.equal(WS.instances[0].readyState, 3, "the leader's connection is closed");
  assert.equal(b.leader, true);
  assert.equal(WS.instances.length, 2);
  b.close();
});
