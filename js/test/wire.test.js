// Encoding and decoding against the shared vectors (tests/vectors/wire_v1.json).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import {
  BackchannelError,
  ErrorCode,
  MAX_BATCH,
  decodeFrame,
  decodeLine,
  encodeCommand,
  encodeFrame,
  shouldReconnect,
} from "../backchannel.js";

const vectors = JSON.parse(readFileSync(new URL("../../tests/vectors/wire_v1.json", import.meta.url), "utf8"));

const nonBlank = (text) => text.split("\n").filter((line) => !/^[ \t\r]*$/.test(line));

/** What the server's decoder makes of a line we wrote: a command with params ({} when absent). */
function asServerSees(line) {
  assert.ok(!line.includes("\n"), "one command, one line");
  const obj = JSON.parse(line);
  return { id: obj.id, method: obj.method, params: obj.params ?? {} };
}

// JSON.parse reads 1.0 and 1e0 as 1, so these texts cannot be told from valid ones once
// parsed; our encoder writes 1, which the hub accepts (checked below).
const HIDDEN_BY_JSON_PARSE = new Set([
  "id 1.0 (a fraction)",
  "id 1e0 (an exponent)",
  "integer param written with a fraction (1.0 is not an integer)",
]);

test("vectors: version 1 and enough of each kind", () => {
  assert.equal(vectors.version, 1);
  assert.ok(vectors.commands.length > 50);
  assert.ok(vectors.replies.length > 20);
  assert.ok(vectors.pushes.length > 20);
});

test("every command the hub runs: our encoding decodes to the vector's command", () => {
  let checked = 0;
  for (const vector of vectors.commands) {
    if (!vector.expect.commands) continue;
    const expected = vector.expect.commands;
    const runnable = expected.filter((c) => "params" in c);
    const lines = runnable.map((c) => encodeCommand(c.id, c.method, c.params));
    for (let i = 0; i < runnable.length; i++) {
      assert.deepEqual(asServerSees(lines[i]), runnable[i], vector.name);
      checked++;
    }
    if (runnable.length === expected.length) {
      // The whole batch as one frame: same commands, same order.
      const frame = encodeFrame(lines);
      assert.deepEqual(frame.split("\n").map(asServerSees), expected, vector.name);
    }
  }
  assert.ok(checked >= 100 + 25, `checked ${checked} commands`);
});

test("every command the hub answers with 104 or 107: our encoder refuses to write it", () => {
  let refused = 0;
  for (const vector of vectors.commands) {
    if (!vector.expect.commands) continue;
    const lines = nonBlank(vector.text);
    vector.expect.commands.forEach((command, i) => {
      if (!("error" in command)) return;
      const sent = JSON.parse(lines[i]);
      if (HIDDEN_BY_JSON_PARSE.has(vector.name)) {
        // What we write instead is an integer, which the hub accepts.
        const line = encodeCommand(sent.id, sent.method, sent.params);
        assert.doesNotMatch(line, /\d[.eE]/, vector.name);
        assert.deepEqual(asServerSees(line).params, sent.params, vector.name);
        return;
      }
      assert.throws(
        () => encodeCommand(sent.id, sent.method, sent.params),
        (err) => err instanceof BackchannelError && err.code === ErrorCode.BAD_ARGUMENT,
        vector.name,
      );
      refused++;
    });
  }
  assert.ok(refused >= 30, `refused ${refused}`);
});

test("every invalid frame: our encoder cannot produce it", () => {
  let count = 0;
  for (const vector of vectors.commands) {
    if (!vector.expect.invalid) continue;
    count++;
    const lines = nonBlank(vector.text);
    if (lines.length === 0) {
      assert.throws(() => encodeFrame([]), BackchannelError, vector.name);
      continue;
    }
    if (lines.length > MAX_BATCH) {
      const encoded = lines.map((l) => {
        const c = JSON.parse(l);
        return encodeCommand(c.id, c.method, c.params);
      });
      assert.throws(() => encodeFrame(encoded), BackchannelError, vector.name);
      continue;
    }
    if (HIDDEN_BY_JSON_PARSE.has(vector.name)) {
      const c = JSON.parse(lines[0]);
      assert.match(encodeCommand(c.id, c.method, c.params), /^\{"id":1,/, vector.name);
      continue;
    }
    // Some line must be impossible for us: not JSON, not an object (our encoder only
    // writes objects on one line each), or refused by encodeCommand.
    const impossible = lines.some((line) => {
      let obj;
      try {
        obj = JSON.parse(line);
      } catch {
        return true;
      }
      if (typeof obj !== "object" || obj === null || Array.isArray(obj)) return true;
      try {
        encodeCommand(obj.id, obj.method, obj.params);
        return false;
      } catch (err) {
        assert.ok(err instanceof BackchannelError);
        return true;
      }
    });
    assert.ok(impossible, vector.name);
  }
  assert.ok(count >= 40, `${count} invalid vectors`);
});

test("every reply vector decodes to its id and result or error", () => {
  for (const vector of vectors.replies) {
    const expected = "result" in vector ? { id: vector.id, result: vector.result } : { id: vector.id, error: vector.error };
    assert.deepEqual(decodeLine(vector.text), expected, vector.name);
  }
});

test("every push vector decodes to its kind and members", () => {
  for (const vector of vectors.pushes) {
    const decoded = decodeLine(vector.text);
    const expected = { push: vector.push, ...vector.input };
    if (vector.push === "disconnect") {
      expected.reconnect = shouldReconnect(vector.input.code);
      assert.equal(expected.reconnect, JSON.parse(vector.text).reconnect, vector.name);
    }
    assert.deepEqual(decoded, expected, vector.name);
  }
});

test("a disconnect push without reconnect gets it from its code's range", () => {
  for (const [code, reconnect] of [[3000, true], [3499, true], [3500, false], [3999, false], [4000, true], [4500, false]]) {
    assert.equal(decodeLine(JSON.stringify({ push: "disconnect", code, reason: "r" })).reconnect, reconnect, String(code));
  }
});

test("a server frame of several lines decodes in order; blank lines and CR are skipped", () => {
  const texts = [...vectors.replies, ...vectors.pushes].map((v) => v.text);
  const frame = "\n" + texts.join("\r\n") + "\n  \t\n";
  const decoded = decodeFrame(frame);
  assert.equal(decoded.length, texts.length);
  decoded.forEach((msg, i) => assert.deepEqual(msg, decodeLine(texts[i])));
});

test("decodeLine refuses what is neither a reply nor a push", () => {
  for (const bad of [
    "nope",
    "[]",
    "null",
    '{"id":0,"result":{}}',
    '{"id":"1","result":{}}',
    '{"id":1}',
    '{"id":1,"result":{},"error":{"code":1}}',
    '{"id":1,"result":[]}',
    '{"id":1,"error":{"message":"no code"}}',
    '{"foo":1}',
    '{"push":"publication","data":1}',
    '{"push":"disconnect","reason":"no code"}',
  ]) {
    assert.throws(() => decodeLine(bad), (e) => e instanceof BackchannelError && e.code === ErrorCode.BAD_RESPONSE, bad);
  }
  assert.equal(decodeLine("  \r"), null);
  // A push of a kind this version does not know passes through.
  assert.deepEqual(decodeLine('{"push":"future","x":1}'), { push: "future", x: 1 });
});

test("the encoder refuses data the hub refuses", () => {
  const refuses = (data, why) =>
    assert.throws(
      () => encodeCommand(1, "publish", { channel: "c", data }),
      (e) => e instanceof BackchannelError && e.code === ErrorCode.BAD_ARGUMENT,
      why,
    );
  refuses(NaN, "NaN");
  refuses([1, Infinity], "Infinity");
  refuses({ a: -Infinity }, "-Infinity");
  refuses("\ud800", "lone high surrogate");
  refuses("x\udc00", "lone low surrogate");
  refuses({ ["k\ud800"]: 1 }, "lone surrogate in a name");
  refuses(10n, "BigInt");
  refuses(undefined, "undefined data (required)");
  const nest = (n) => {
    let v = 1;
    for (let i = 0; i < n; i++) v = [v];
    return v;
  };
  // params is depth 0, data depth 1: 31 arrays put the 1 at depth 32, allowed; 32 do not.
  assert.doesNotThrow(() => encodeCommand(1, "publish", { channel: "c", data: nest(31) }));
  refuses(nest(32), "too deep");
  // Params: types, unknown names, null for optional ones, non-negative integers.
  const bad = [
    ["subscribe", { channel: "c", offset: -1 }],
    ["subscribe", { channel: "c", offset: 1.5 }],
    ["subscribe", { channel: "c", token: null }],
    ["subscribe", { channel: "c", extra: 1 }],
    ["history", { channel: "c", limit: "5" }],
    ["connect", { v: "1" }],
    ["nope", {}],
    ["ping", []],
  ];
  for (const [method, params] of bad) {
    assert.throws(() => encodeCommand(1, method, params), BackchannelError, `${method} ${JSON.stringify(params)}`);
  }
  for (const id of [0, -1, 1.5, 2 ** 53, "1", true, null]) {
    assert.throws(() => encodeCommand(id, "ping"), BackchannelError, `id ${id}`);
  }
});

test("the encoder writes compact UTF-8 JSON, one line, params left out when empty", () => {
  assert.equal(encodeCommand(7, "ping"), '{"id":7,"method":"ping"}');
  assert.equal(encodeCommand(7, "ping", {}), '{"id":7,"method":"ping"}');
  const line = encodeCommand(2, "publish", { channel: "café", data: "a\nb 😀 \u2028", idempotency_key: undefined });
  assert.equal(line, '{"id":2,"method":"publish","params":{"channel":"café","data":"a\\nb 😀 \u2028"}}');
  assert.equal(encodeCommand(2 ** 53 - 1, "ping"), '{"id":9007199254740991,"method":"ping"}');
  const frame = encodeFrame(Array.from({ length: MAX_BATCH }, (_, i) => encodeCommand(i + 1, "ping")));
  assert.equal(frame.split("\n").length, MAX_BATCH);
});

test("dropped and subscribe pushes: a channel, and a position that is whole when present", async () => {
  const { decodeLine } = await import("../backchannel.js");
  assert.deepEqual(decodeLine('{"push":"dropped","channel":"c","epoch":"E","offset":4}'), {
    push: "dropped",
    channel: "c",
    epoch: "E",
    offset: 4,
  });
  assert.deepEqual(decodeLine('{"push":"subscribe","channel":"c"}'), { push: "subscribe", channel: "c" });
  for (const bad of [
    '{"push":"dropped"}',
    '{"push":"dropped","channel":"c","offset":4}',
    '{"push":"subscribe","channel":"c","epoch":"E","offset":-1.5}',
    '{"push":"subscribe","channel":"c","epoch":7,"offset":1}',
  ]) {
    assert.throws(() => decodeLine(bad), (e) => e.code === 6, bad);
  }
});
