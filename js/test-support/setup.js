// A client wired to fakes, and shortcuts the tests share.
import { Client, resetTransportMemory } from "../backchannel.js";
import { FakeClock, flush, makeEventSource, makeFetch, makeWebSocket, reply } from "./fakes.js";

export const URL_WS = "ws://hub.test/ws";
export const URL_LP = "http://hub.test/lp";
export const URL_SSE = "http://hub.test/sse";

/**
 * A client with a fake clock, WebSocket class and fetch; random() is 0.5 unless given.
 * With `sse`, a fake EventSource class too (`ctx.ES`; without it SSE is not available,
 * as in node); `url`, the hub's WebSocket URL. `events` records every event the client emits, `of(name)` the arguments
 * of one kind.
 */
export function setup(options = {}, { sse = false, url = URL_WS } = {}) {
  resetTransportMemory();
  const clock = new FakeClock();
  const WS = makeWebSocket();
  const ES = makeEventSource();
  const net = makeFetch();
  const client = new Client(url, {
    WebSocket: WS,
    ...(sse ? { EventSource: ES } : {}),
    lifecycleTarget: null,
    fetch: net.fetch,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    now: clock.dateNow,
    random: () => 0.5,
    ...options,
  });
  const events = [];
  for (const name of ["state", "error", "disconnect", "transport", "token", "outbox", "subscription"]) {
    client.on(name, (...args) => events.push([name, ...args]));
  }
  const of = (name) => events.filter((e) => e[0] === name).map((e) => (e.length === 2 ? e[1] : e.slice(1)));
  return { client, clock, WS, ES, net, events, of };
}

/** Opens the last fake WebSocket and answers its connect command; returns the socket. */
export async function acceptWebSocket(ctx, result = { client: "c1", user: "alice", v: 1 }) {
  const ws = ctx.WS.last();
  ws.open();
  await flush();
  const connect = ws.lastCommand("connect");
  ws.receive(reply(connect.id, result));
  await flush();
  return ws;
}

/** connect() over a fake WebSocket, answered; returns the socket. */
export async function connectWebSocket(ctx, result) {
  const promise = ctx.client.connect();
  const ws = await acceptWebSocket(ctx, result);
  await promise;
  return ws;
}

/** Answers the last subscribe command for a channel on a socket. */
export async function answerSubscribe(ws, channel, result = {}) {
  await flush();
  const cmd = ws.commands().filter((c) => c.method === "subscribe" && c.params.channel === channel).pop();
  if (!cmd) throw new Error(`no subscribe to ${channel}`);
  ws.receive(reply(cmd.id, result));
  await flush();
  return cmd;
}

/**
 * Answers a long-poll open (POST /lp) and the first poll with the connect reply.
 * Returns the connect command that was sent.
 */
export async function acceptLongPoll(ctx, sid = "S1", result = { client: "c-lp", user: "alice", v: 1 }) {
  await flush();
  const open = ctx.net.one("POST");
  if (open.url !== URL_LP) throw new Error(`long-poll open to ${open.url}`);
  const connect = JSON.parse(open.body);
  open.respond(200, { sid, ack: 0 });
  await flush();
  const poll = ctx.net.one("GET");
  poll.respond(200, `{"batch":1}\n` + reply(connect.id, result));
  await flush();
  return connect;
}

/** The pending poll, checked to carry this sid and ack. */
export function pendingPoll(ctx, sid, ack) {
  const poll = ctx.net.one("GET");
  const q = poll.query;
  if (q.get("sid") !== sid || q.get("ack") !== String(ack)) {
    throw new Error(`poll with sid=${q.get("sid")} ack=${q.get("ack")}, expected ${sid} ${ack}`);
  }
  return poll;
}

/**
 * Answers the last EventSource's connect: its session event, then the connect reply as
 * the stream's first message. Returns the EventSource.
 */
export async function acceptSse(ctx, sid = "S1", result = { client: "c-sse", user: "alice", v: 1 }) {
  await flush();
  const es = ctx.ES.last();
  if (!es.url.startsWith(`${URL_SSE}?frame=`)) throw new Error(`event stream from ${es.url}`);
  const [connect] = es.frame();
  es.session(sid);
  es.receive(reply(connect.id, result));
  await flush();
  return es;
}

/** The commands POSTed to an SSE session so far, parsed, in order. */
export function ssePosts(ctx, sid) {
  return ctx.net.requests
    .filter((r) => r.method === "POST" && r.url === `${URL_SSE}?sid=${sid}`)
    .flatMap((r) => r.body.split("\n").map((line) => JSON.parse(line)));
}
