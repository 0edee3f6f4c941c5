// The load generator of benchmarks/hub.py: one node process (pinned by the driver to its
// own CPU) whose clients speak either backchannel's hub wire or socket.io's (engine.io v4
// over a plain WebSocket), on a minimal WebSocket client of its own (RawWebSocket below).
//
//   node hub_loadgen.mjs '{"proto": "backchannel"|"socketio", "ports": [P, ...],
//                          "pids": [SERVER_PID, ...], "workload": "fanout"|"chat"|"storm", ...}'
//
// With several ports (nodes of one cluster), client k connects to ports[k % ports.length];
// the servers' CPU and RSS are the sums over "pids" (the nodes and Redis).
//
// It prints one JSON object per line: results, then {"done": true}; or {"error": "..."}
// and exits with status 1. Why neither socket.io-client nor `ws`: with either, the
// generator spent about as much CPU per delivery as the servers it measures (socket.io-client
// parses every packet into objects; `ws` runs a stream and an event per message). The
// generator must stay far below its core while a server saturates its own, so it reads
// frames off net.Socket itself: no compression offered, server frames are small and
// unfragmented, every client frame is masked (RFC 6455, section 5.3). Received
// publications are not parsed as JSON on the hot path: the generator only reads the
// numbers it stamped ("i" and "t") out of the text, after checking the first one whole.
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { connect } from "node:net";
import { performance } from "node:perf_hooks";

const cfg = JSON.parse(process.argv[2]);
const HOST = "127.0.0.1";
const OPEN_CONCURRENCY = cfg.concurrency ?? 100;
const PAD = "x".repeat(32);
const CLK_TCK = 100;

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function fail(message) {
  emit({ error: String(message) });
  process.exit(1);
}

// --- /proc readings of the server, and our own CPU ----------------------------------------

function serverCpu() {
  let total = 0;
  for (const pid of cfg.pids) {
    const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // Fields 14 and 15 of proc(5) (utime, stime); fields[0] here is field 3.
    total += (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
  }
  return total;
}

function serverRssKiB() {
  let total = 0;
  for (const pid of cfg.pids) {
    const status = readFileSync(`/proc/${pid}/status`, "latin1");
    total += Number(/VmRSS:\s+(\d+)/.exec(status)[1]);
  }
  return total;
}

// Busy seconds of one CPU (all but idle and iowait; steal included), from /proc/stat.
function cpuBusy(cpu) {
  if (cpu === null || cpu === undefined) return 0;
  const line = readFileSync("/proc/stat", "latin1")
    .split("\n")
    .find((l) => l.startsWith(`cpu${cpu} `));
  const v = line.trim().split(/\s+/).slice(1, 9).map(Number);
  return (v.reduce((a, b) => a + b, 0) - v[3] - v[4]) / CLK_TCK;
}

function ownCpu() {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

class Clocks {
  constructor() {
    this.wall = performance.now();
    this.server = serverCpu();
    this.own = ownCpu();
    this.serverCore = cpuBusy(cfg.serverCpu);
  }
  // Shares of one core used by the server and by this process since construction.
  shares() {
    const wall = (performance.now() - this.wall) / 1000;
    const server = (serverCpu() - this.server) / wall;
    const out = { seconds: wall, server_cpu: server, gen_cpu: (ownCpu() - this.own) / wall };
    // What else ran on the server's CPU meanwhile (other processes, the hypervisor's
    // steal): the server got only what was left of its core.
    if (cfg.serverCpu !== null && cfg.serverCpu !== undefined) {
      out.other_cpu = Math.max(0, (cpuBusy(cfg.serverCpu) - this.serverCore) / wall - server);
    }
    return out;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// --- a minimal WebSocket client --------------------------------------------------------------

const HEAD_END = Buffer.from("\r\n\r\n");
// Every socket reads into this one buffer; receive() handles what was read before the
// next read, and copies out only an incomplete frame.
const READ_BUFFER = Buffer.allocUnsafe(256 * 1024);

// A fresh mask key for every frame (RFC 6455, section 5.3), drawn from a pool of CSPRNG
// bytes refilled as it runs out: one randomBytes call per 1 024 frames.
let maskPool = randomBytes(4096);
let maskAt = 0;
function maskKey() {
  if (maskAt === maskPool.length) {
    maskPool = randomBytes(4096);
    maskAt = 0;
  }
  maskAt += 4;
  return maskPool.subarray(maskAt - 4, maskAt);
}

// Events: onopen(), ontext(string, now), onerror(Error), onclose(code, reason).
class RawWebSocket {
  constructor(port, path) {
    this.onopen = () => {};
    this.ontext = () => {};
    this.onerror = () => {};
    this.onclose = () => {};
    this.upgraded = false;
    this.rest = null;
    this.closed = false;
    // `onread`: reads land in one shared buffer and come straight to receive(), without a
    // Buffer per read and the stream's "data" event: the cheapest read node has.
    const socket = connect({
      host: HOST,
      port,
      noDelay: true,
      onread: { buffer: READ_BUFFER, callback: (size, buf) => this.receive(buf.subarray(0, size)) },
    });
    this.socket = socket;
    socket.on("connect", () => {
      socket.write(
        `GET ${path} HTTP/1.1\r\nHost: ${HOST}:${port}\r\nUpgrade: websocket\r\n` +
          `Connection: Upgrade\r\nSec-WebSocket-Key: ${randomBytes(16).toString("base64")}\r\n` +
          "Sec-WebSocket-Version: 13\r\n\r\n",
      );
    });
    socket.on("error", (err) => this.onerror(err));
    socket.on("close", () => {
      if (!this.closed) {
        this.closed = true;
        this.onclose(1006, "connection lost");
      }
    });
  }

  receive(chunk) {
    const now = performance.now();
    let buf = this.rest === null ? chunk : Buffer.concat([this.rest, chunk]);
    this.rest = null;
    if (!this.upgraded) {
      const end = buf.indexOf(HEAD_END);
      if (end < 0) {
        this.rest = Buffer.from(buf);
        return;
      }
      const head = buf.toString("latin1", 0, end);
      if (!head.startsWith("HTTP/1.1 101")) {
        return this.onerror(new Error(`handshake refused: ${head.split("\r\n")[0]}`));
      }
      this.upgraded = true;
      buf = buf.subarray(end + 4);
      this.onopen();
    }
    let pos = 0;
    const length = buf.length;
    while (length - pos >= 2) {
      const b0 = buf[pos];
      let size = buf[pos + 1] & 0x7f;
      let start = pos + 2;
      if (size === 126) {
        if (length - pos < 4) break;
        size = buf.readUInt16BE(pos + 2);
        start = pos + 4;
      } else if (size === 127) {
        if (length - pos < 10) break;
        size = Number(buf.readBigUInt64BE(pos + 2));
        start = pos + 10;
      }
      const end = start + size;
      if (end > length) break;
      pos = end;
      if (b0 === 0x81) {
        this.ontext(buf.toString("utf8", start, end), now);
      } else if (b0 === 0x89) {
        this.write(0x8a, buf.subarray(start, end));
      } else if ((b0 & 0x0f) === 0x08) {
        this.closed = true;
        const code = size >= 2 ? buf.readUInt16BE(start) : 1005;
        this.onclose(code, buf.toString("utf8", start + 2, end));
        this.socket.destroy();
        return;
      } else if ((b0 & 0x0f) !== 0x0a) {
        return this.onerror(new Error(`unexpected frame, first byte ${b0}`));
      }
    }
    if (pos < length) this.rest = Buffer.from(buf.subarray(pos));
  }

  write(first, payload) {
    const size = payload.length;
    const headSize = size < 126 ? 2 : size < 65536 ? 4 : 10;
    const frame = Buffer.allocUnsafe(headSize + 4 + size);
    frame[0] = first;
    if (headSize === 2) {
      frame[1] = 0x80 | size;
    } else if (headSize === 4) {
      frame[1] = 0x80 | 126;
      frame.writeUInt16BE(size, 2);
    } else {
      frame[1] = 0x80 | 127;
      frame.writeBigUInt64BE(BigInt(size), 2);
    }
    const key = maskKey();
    key.copy(frame, headSize);
    const at = headSize + 4;
    for (let k = 0; k < size; k++) frame[at + k] = payload[k] ^ key[k & 3];
    this.socket.write(frame);
  }

  send(text) {
    this.write(0x81, Buffer.from(text));
  }

  close() {
    this.closed = true;
    this.socket.destroy();
  }
}

// --- the two wires --------------------------------------------------------------------------

// A publication as the publisher stamps it: "i" (which one), "t" (performance.now() at send).
function payload(i) {
  return { i, t: performance.now(), text: PAD };
}

// The number after `"key":` in a text, without parsing the whole of it.
function numberAfter(text, key, from) {
  const at = text.indexOf(key, from);
  if (at < 0) return NaN;
  return parseFloat(text.slice(at + key.length, at + key.length + 24));
}

let onPublication = (_i, _t, _now) => {};
let firstChecked = false;
let failed = null;

function checkFirst(data) {
  // The first publication received is parsed whole: the servers must send what was published.
  if (firstChecked) return;
  firstChecked = true;
  const ok = typeof data === "object" && data !== null && typeof data.i === "number" && data.text === PAD;
  if (!ok) fail(`unexpected publication data: ${JSON.stringify(data)}`);
}

let opened = 0;
const nextPort = () => cfg.ports[opened++ % cfg.ports.length];

class BackchannelClient {
  constructor(room) {
    this.room = `bench:${room}`;
    this.nextId = 3;
  }
  open() {
    return new Promise((resolve, reject) => {
      const ws = new RawWebSocket(nextPort(), "/ws");
      this.ws = ws;
      let ready = false;
      ws.onopen = () => {
        ws.send(
          JSON.stringify({ id: 1, method: "connect" }) +
            "\n" +
            JSON.stringify({ id: 2, method: "subscribe", params: { channel: this.room } }),
        );
      };
      ws.ontext = (text, now) => {
        if (!ready) {
          for (const line of text.split("\n")) {
            const msg = JSON.parse(line);
            if (msg.error) return reject(new Error(`${this.room}: ${line}`));
            if (msg.id === 2) {
              ready = true;
              resolve();
            }
          }
          return;
        }
        // A frame holds one or more lines (the server's outbox joins what waits).
        let start = 0;
        while (start < text.length) {
          let end = text.indexOf("\n", start);
          if (end < 0) end = text.length;
          if (text.startsWith('{"push":"publication"', start)) {
            if (!firstChecked) checkFirst(JSON.parse(text.slice(start, end)).data);
            onPublication(numberAfter(text, '"i":', start), numberAfter(text, '"t":', start), now);
          } else if (text.includes('"error"', start)) {
            failed ??= `${this.room}: ${text.slice(start, end)}`;
          }
          start = end + 1;
        }
      };
      ws.onerror = (err) => (ready ? (failed ??= err.message) : reject(err));
      ws.onclose = (code, reason) => {
        const err = `a connection closed: ${code} ${reason}`;
        if (!ready) reject(new Error(err));
        else if (!closing) failed ??= err;
      };
    });
  }
  publish(data) {
    this.ws.send(
      JSON.stringify({ id: this.nextId++, method: "publish", params: { channel: this.room, data } }),
    );
  }
}

class SocketIoClient {
  constructor(room) {
    this.room = room;
  }
  open() {
    return new Promise((resolve, reject) => {
      const ws = new RawWebSocket(nextPort(), "/socket.io/?EIO=4&transport=websocket");
      this.ws = ws;
      let ready = false;
      ws.ontext = (text, now) => {
        const kind = text.charCodeAt(0);
        if (kind === 0x34 /* 4: message */) {
          if (text.startsWith('42["pub",')) {
            if (!firstChecked) checkFirst(JSON.parse(text.slice(2))[1]);
            onPublication(numberAfter(text, '"i":', 8), numberAfter(text, '"t":', 8), now);
          } else if (text.startsWith("40")) {
            // Connected to the default namespace: join the room, with acknowledgement 0.
            ws.send(`420${JSON.stringify(["join", this.room])}`);
          } else if (text.startsWith("430")) {
            ready = true;
            resolve();
          } else if (text.startsWith("44")) {
            const err = new Error(`${this.room}: ${text}`);
            ready ? (failed ??= err.message) : reject(err);
          }
        } else if (kind === 0x32 /* 2: ping */) {
          ws.send("3");
        } else if (kind === 0x30 /* 0: open */) {
          ws.send("40");
        }
      };
      ws.onerror = (err) => (ready ? (failed ??= err.message) : reject(err));
      ws.onclose = (code, reason) => {
        const err = `a connection closed: ${code} ${reason}`;
        if (!ready) reject(new Error(err));
        else if (!closing) failed ??= err;
      };
    });
  }
  publish(data) {
    this.ws.send(`42${JSON.stringify(["publish", { room: this.room, data }])}`);
  }
}

const Client = cfg.proto === "backchannel" ? BackchannelClient : SocketIoClient;
let closing = false;

// Open clients for the given rooms, OPEN_CONCURRENCY at a time; resolves with them all.
// Fails when cfg.timeout seconds pass with no client opened (a slow server is measured; a
// stalled one ends the run).
async function openClients(rooms) {
  const clients = new Array(rooms.length);
  let next = 0;
  let done = 0;
  let progress = performance.now();
  async function worker() {
    while (next < rooms.length) {
      const k = next++;
      const client = new Client(rooms[k]);
      await client.open();
      clients[k] = client;
      done++;
      progress = performance.now();
    }
  }
  let watching = true;
  const stalled = (async () => {
    while (watching) {
      await sleep(100);
      if (watching && performance.now() - progress > cfg.timeout * 1000) {
        throw new Error(`${done} of ${rooms.length} clients open, none more for ${cfg.timeout} s`);
      }
    }
  })();
  const workers = [];
  for (let w = 0; w < Math.min(OPEN_CONCURRENCY, rooms.length); w++) workers.push(worker());
  try {
    await Promise.race([Promise.all(workers), stalled]);
  } finally {
    watching = false;
  }
  return clients;
}

// Around each measured phase, a line for the driver (which may profile the server then);
// with cfg.profile, a pause after it, for the profiler to attach.
async function measuring(label) {
  emit({ phase: "measure", label });
  if (cfg.profile) await sleep(1000);
}

function measured(label) {
  emit({ phase: "end", label });
}

function percentile(sorted, q) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil(sorted.length * q) - 1)];
}

function check() {
  if (failed) fail(failed);
}

// --- workloads ------------------------------------------------------------------------------

// One publication at a time to every client of room "all", for each count in cfg.counts
// (rising: the clients of a count stay for the next); the next goes once all have it.
async function fanout() {
  const clients = [];
  let i = 0;
  for (const n of cfg.counts) {
    clients.push(...(await openClients(new Array(n - clients.length).fill("all"))));
    await sleep(500);
    check();
    const times = [];
    let clocks = null;
    await measuring(`fanout-${n}`);
    for (let k = 0; k < cfg.warmup + cfg.publications; k++) {
      if (k === cfg.warmup) clocks = new Clocks();
      const want = i;
      let got = 0;
      let last = 0;
      const done = new Promise((resolve) => {
        onPublication = (pi, _t, now) => {
          if (pi !== want) return void (failed ??= `publication ${pi} arrived during ${want}`);
          last = now;
          if (++got === n) resolve();
        };
      });
      const start = performance.now();
      // A different publisher each time: no client's publish rate limit is approached.
      clients[i % n].publish(payload(i));
      i++;
      const timer = sleep(cfg.timeout * 1000).then(() => "timeout");
      if ((await Promise.race([done, timer])) === "timeout") {
        fail(`fan-out to ${n}: publication received by ${got} within ${cfg.timeout} s`);
      }
      check();
      if (k >= cfg.warmup) times.push(last - start);
    }
    const shares = clocks.shares();
    measured(`fanout-${n}`);
    times.sort((a, b) => a - b);
    const median = percentile(times, 0.5);
    emit({
      workload: "fanout",
      subscribers: n,
      publications: times.length,
      median_ms: median,
      max_ms: times[times.length - 1],
      deliveries_per_s: n / (median / 1000),
      ...shares,
    });
  }
  onPublication = () => {};
}

// 200 rooms x 10 clients; each step publishes `rate` publications per second from the
// clients (round robin, each in its own room) for cfg.step seconds, stamps every delivery,
// and waits up to cfg.grace seconds for the last. A delivery that never came counts as
// infinitely late. The ramp stops after two steps in a row whose p99 is 100 ms or more.
async function chat() {
  const rooms = [];
  for (let r = 0; r < cfg.rooms; r++) for (let u = 0; u < cfg.users; u++) rooms.push(`room-${r}`);
  // Interleaved, so consecutive publishers are in different rooms.
  const order = [];
  for (let u = 0; u < cfg.users; u++) for (let r = 0; r < cfg.rooms; r++) order.push(r * cfg.users + u);
  const clients = await openClients(rooms);
  await sleep(500);
  check();
  let seq = 0;
  let failures = 0;
  await measuring("chat");
  for (const rate of cfg.rates) {
    const latencies = [];
    let received = 0;
    let lastArrival = 0;
    onPublication = (_i, t, now) => {
      latencies.push(now - t);
      received++;
      lastArrival = now;
    };
    const clocks = new Clocks();
    const start = performance.now();
    let sent = 0;
    const total = Math.round(rate * cfg.step);
    while (sent < total) {
      const due = Math.min(total, Math.floor(((performance.now() - start) / 1000) * rate) + 1);
      while (sent < due) {
        clients[order[seq % order.length]].publish(payload(seq));
        seq++;
        sent++;
      }
      await sleep(2);
      check();
    }
    const sendEnd = performance.now();
    const expected = sent * cfg.users;
    while (received < expected && performance.now() - sendEnd < cfg.grace * 1000) {
      await sleep(10);
    }
    const shares = clocks.shares();
    check();
    latencies.sort((a, b) => a - b);
    const missing = expected - received;
    const all = latencies.concat(new Array(Math.max(0, missing)).fill(Infinity));
    const p99 = percentile(all, 0.99);
    const span = (Math.max(lastArrival, sendEnd) - start) / 1000;
    emit({
      workload: "chat",
      rate,
      published: sent,
      expected,
      received,
      delivered_per_s: received / span,
      p50_ms: percentile(all, 0.5),
      p99_ms: Number.isFinite(p99) ? p99 : null,
      ...shares,
    });
    onPublication = () => {};
    // One step over the line may be noise (a shared machine); two in a row end the ramp.
    failures = p99 < 100 ? 0 : failures + 1;
    if (failures === 2) break;
    // Let the server settle (timers, GC) before the next step.
    await sleep(500);
  }
  measured("chat");
}

// Memory per subscribed client (10 clients as a baseline), then the connection storm:
// cfg.clients clients connect and subscribe, OPEN_CONCURRENCY at a time, timed.
async function storm() {
  const rooms = (n, from) => Array.from({ length: n }, (_, k) => `room-${(from + k) % cfg.rooms}`);
  await openClients(rooms(10, 0));
  await sleep(1000);
  const before = serverRssKiB();
  await measuring("storm");
  const clocks = new Clocks();
  await openClients(rooms(cfg.clients, 10));
  const shares = clocks.shares();
  measured("storm");
  check();
  await sleep(cfg.settle * 1000);
  check();
  const after = serverRssKiB();
  emit({
    workload: "storm",
    clients: cfg.clients,
    opens_per_s: cfg.clients / shares.seconds,
    rss_before_kib: before,
    rss_after_kib: after,
    kib_per_client: (after - before) / cfg.clients,
    ...shares,
  });
}

const workloads = { fanout, chat, storm };
try {
  await workloads[cfg.workload]();
  closing = true;
  emit({ done: true });
  process.exit(0);
} catch (err) {
  fail(err && err.message ? err.message : err);
}
