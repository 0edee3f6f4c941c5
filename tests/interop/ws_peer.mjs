// A WebSocket peer built on node's `ws`, for backchannel's interop tests.
//
//   node ws_peer.mjs server --port 0 [--tls-cert F --tls-key F] [--deflate]
//                           [--max-payload N] [--report]
//   node ws_peer.mjs client --url URL [--ca F] [--deflate] [--timeout S]
//                           --script JSON|@FILE
//
// The server prints {"port": N} once listening, then (with --report) one JSON
// line per connection, message and close. The client prints one JSON line when
// its script ends: {"ok": ..., "error"?: ..., "close_code": ..., "close_reason": ...}.
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { parseArgs } from 'node:util';
import WebSocket, { WebSocketServer } from 'ws';

const { values: opts, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    port: { type: 'string', default: '0' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
    deflate: { type: 'boolean', default: false },
    'max-payload': { type: 'string' },
    report: { type: 'boolean', default: false },
    url: { type: 'string' },
    ca: { type: 'string' },
    timeout: { type: 'string', default: '10' },
    script: { type: 'string' },
  },
});

// Node writes to a pipe synchronously on Linux, so one line is written whole.
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
// threshold 0: compress every message, even tiny ones, so tests see it happen.
const deflate = opts.deflate ? { threshold: 0 } : false;

function runServer() {
  const tls = opts['tls-cert'] && opts['tls-key'];
  const httpServer = tls
    ? https.createServer({
        cert: fs.readFileSync(opts['tls-cert']),
        key: fs.readFileSync(opts['tls-key']),
      })
    : http.createServer();
  // A plain HTTP request (no Upgrade) gets a clean answer rather than a hang.
  httpServer.on('request', (req, res) => res.writeHead(426).end('WebSocket only\n'));
  const wss = new WebSocketServer({
    server: httpServer,
    perMessageDeflate: deflate,
    // ws's default is 100 MiB; a smaller limit lets a test provoke a 1009 close.
    ...(opts['max-payload'] ? { maxPayload: Number(opts['max-payload']) } : {}),
  });
  const report = (obj) => opts.report && emit(obj);
  let connections = 0;

  wss.on('connection', (ws) => {
    const conn = ++connections;
    const pendingPings = []; // payloads of pings we sent and still wait a pong for
    report({ event: 'connection', conn, extensions: ws.extensions, protocol: ws.protocol });

    ws.on('message', (data, isBinary) => {
      // ws has no public per-message "was compressed" flag; its receiver keeps
      // the RSV1 bit of the current message in `_compressed` until the next
      // data frame is parsed, which is after this event. null if it ever moves.
      const flag = ws._receiver?._compressed;
      report({ event: 'message', conn, binary: isBinary, length: data.length,
               compressed: typeof flag === 'boolean' ? flag : null });
      if (!isBinary) {
        const text = data.toString('utf8');
        const close = /^close:(\d+):(.*)$/s.exec(text);
        const ping = text.startsWith('ping:') ? text.slice(5) : null;
        // ws throws on what a peer may not send (close code 1005, a control
        // payload over 125 bytes): answer `error:...` instead of crashing.
        try {
          if (close) ws.close(Number(close[1]), close[2]);
          else if (ping !== null) {
            ws.ping(ping);
            pendingPings.push(ping);
          }
        } catch (err) {
          ws.send(`error:${err.message}`);
        }
        if (close || ping !== null) return;
      }
      ws.send(data, { binary: isBinary }); // echo, keeping the message type
    });

    ws.on('pong', (data) => {
      // Only answer pongs to our own pings; unsolicited pongs are legal and ignored.
      const i = pendingPings.indexOf(data.toString('utf8'));
      if (i >= 0) ws.send(`pong:${pendingPings.splice(i, 1)[0]}`);
    });
    ws.on('close', (code, reason) => {
      report({ event: 'close', conn, code, reason: reason.toString() });
    });
    // Without a listener, a protocol error from the peer would crash the process.
    ws.on('error', (err) => report({ event: 'error', conn, code: err.code, message: err.message }));
  });

  const shutdown = () => {
    for (const ws of wss.clients) ws.terminate();
    wss.close();
    httpServer.close();
    process.exit(0);
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
  // The parent holding our stdin pipe dies -> stdin ends -> we go too, so no
  // peer outlives a crashed test run. Only for a pipe: /dev/null ends at once.
  try {
    const st = fs.fstatSync(0);
    if (st.isFIFO() || st.isSocket()) {
      process.stdin.on('end', shutdown).on('error', shutdown).resume();
    }
  } catch { /* no stdin at all: rely on signals */ }

  httpServer.listen(Number(opts.port), '127.0.0.1', () => {
    emit({ port: httpServer.address().port });
  });
}

async function runClient() {
  const timeoutMs = Number(opts.timeout) * 1000;
  const raw = opts.script ?? '[]';
  // A single argv string is capped at 128 KiB on Linux: big scripts go in a file.
  const script = JSON.parse(raw.startsWith('@') ? fs.readFileSync(raw.slice(1), 'utf8') : raw);
  const ws = new WebSocket(opts.url, {
    perMessageDeflate: deflate,
    ...(opts.ca ? { ca: fs.readFileSync(opts.ca) } : {}),
  });

  // Everything the peer does lands here; steps wait on it with waitFor().
  const messages = [];
  const pongs = [];
  let closed = null;
  let failure = null;
  const waiters = new Set();
  const changed = () => { for (const poll of [...waiters]) poll(); };
  ws.on('open', () => changed());
  ws.on('message', (data, isBinary) => { messages.push({ data, isBinary }); changed(); });
  ws.on('pong', (data) => { pongs.push(data.toString('utf8')); changed(); });
  ws.on('close', (code, reason) => { closed = { code, reason: reason.toString() }; changed(); });
  ws.on('error', (err) => { failure ??= err; changed(); });

  // Resolves with check()'s first non-undefined result; rejects on timeout or throw.
  const waitFor = (what, check) => new Promise((resolve, reject) => {
    const timeout = () => finish(reject, new Error(`timeout waiting for ${what}`));
    const timer = setTimeout(timeout, timeoutMs);
    const finish = (fn, value) => { clearTimeout(timer); waiters.delete(poll); fn(value); };
    const poll = () => {
      try {
        const result = check();
        if (result !== undefined) finish(resolve, result);
      } catch (err) { finish(reject, err); }
    };
    waiters.add(poll);
    poll();
  });
  const gone = (what) => {
    if (failure) throw new Error(`${failure.message} (waiting for ${what})`);
    if (closed) throw new Error(`closed ${closed.code} "${closed.reason}" waiting for ${what}`);
  };
  const nextOf = (queue, what) => waitFor(what, () => (queue.length ? queue.shift() : gone(what)));
  // ws always emits 'close' after an 'error', so waiting for a close needs no error check.
  const closeOf = (what) => waitFor(what, () => closed ?? undefined);
  // {"send": "x", "repeat": 100000} builds a big message without a big script.
  const text = (step, key) => String(step[key]).repeat(step.repeat ?? 1);
  const show = (s) => JSON.stringify(s.length > 60 ? `${s.slice(0, 60)}...(${s.length} chars)` : s);
  const check = (cond, msg) => { if (!cond) throw new Error(msg); };

  let result;
  try {
    await waitFor('open', () => (ws.readyState === WebSocket.OPEN ? true : gone('open')));
    for (const step of script) {
      if ('send' in step) ws.send(text(step, 'send'));
      else if ('send_binary_hex' in step) ws.send(Buffer.from(step.send_binary_hex, 'hex'));
      else if ('send_fragmented' in step) {
        // ws sends a frame per call while fin is false, continuation frames after the first.
        const parts = step.send_fragmented;
        parts.forEach((part, i) => ws.send(part, { binary: false, fin: i === parts.length - 1 }));
      } else if ('expect' in step) {
        const msg = await nextOf(messages, 'a text message');
        const want = text(step, 'expect');
        check(!msg.isBinary, `expected text ${show(want)}, got a binary message`);
        const got = msg.data.toString('utf8');
        check(got === want, `expected text ${show(want)}, got ${show(got)}`);
      } else if ('expect_binary_hex' in step) {
        const msg = await nextOf(messages, 'a binary message');
        const got = msg.data.toString('hex');
        check(msg.isBinary, `expected binary ${step.expect_binary_hex}, got a text message`);
        check(got === step.expect_binary_hex.toLowerCase(),
              `expected binary ${step.expect_binary_hex}, got ${show(got)}`);
      } else if ('ping' in step) ws.ping(step.ping);
      else if ('expect_pong' in step) {
        const got = await nextOf(pongs, 'a pong');
        check(got === step.expect_pong,
              `expected pong ${show(step.expect_pong)}, got ${show(got)}`);
      } else if ('close' in step) ws.close(...(step.close ?? []));
      else if ('expect_close' in step) {
        const [code, reason = ''] = step.expect_close;
        const got = await closeOf('close');
        check(got.code === code && got.reason === reason,
              `expected close ${code} "${reason}", got ${got.code} "${got.reason}"`);
      } else if ('expect_close_code' in step) {
        const got = await closeOf('close');
        check(got.code === step.expect_close_code,
              `expected close code ${step.expect_close_code}, got ${got.code}`);
      } else throw new Error(`unknown step ${JSON.stringify(step)}`);
    }
    // Script done: close cleanly (if nobody did) so the close code seen is reported.
    if (ws.readyState === WebSocket.OPEN) ws.close(1000);
    await closeOf('the closing handshake');
    result = { ok: true };
  } catch (err) {
    result = { ok: false, error: err.message };
    ws.terminate();
  }
  emit({ ...result, close_code: closed?.code ?? null, close_reason: closed?.reason ?? null });
  process.exit(result.ok ? 0 : 1);
}

if (positionals[0] === 'server') runServer();
else if (positionals[0] === 'client') await runClient();
else {
  process.stderr.write('usage: ws_peer.mjs server|client [options] (see the top of this file)\n');
  process.exit(2);
}
