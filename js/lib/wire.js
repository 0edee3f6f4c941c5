// The wire format, version 1 (docs/protocol.md): commands out, replies and pushes in.
// Pure: no I/O, no timers.

import { BackchannelError, ErrorCode, MAX_BATCH, MAX_DEPTH, shouldReconnect } from "./codes.js";

// The browser client of backchannel's hub: wire format v1 (docs/protocol.md) over
// WebSocket, with long polling as a fallback. One plain ES module, no dependencies.

/**
 * @typedef {"disconnected" | "connecting" | "connected" | "closed"} ClientState
 * @typedef {"subscribing" | "subscribed" | "unsubscribed"} SubscriptionState
 * @typedef {string} TransportName a registered transport: "websocket", "longpoll", or one of the page's
 */

/**
 * A connection as the hub describes it (a "client object").
 * @typedef {object} ClientInfo
 * @property {string} client the connection's client id
 * @property {string} user its user id
 * @property {*} [info] data the application attached to the connection
 */

/**
 * A publication ("publication object").
 * @typedef {object} Publication
 * @property {string} channel
 * @property {*} data
 * @property {number} [offset] its offset in the channel's stream (channels with history)
 * @property {string} [epoch] the stream's epoch (with offset)
 * @property {ClientInfo} [info] the publisher, when known
 */

/**
 * What a disconnect means: its code, a reason, and whether the client reconnects.
 * @typedef {object} DisconnectInfo
 * @property {number} code a disconnect code (3000-4999 from the hub; 1000 closed by the client; 1006 connection lost)
 * @property {string} reason
 * @property {boolean} reconnect
 */

// Encoding commands.

/** Each method's params: name -> [type, required]. */
const METHODS = {
  connect: { v: ["int", false], token: ["string", false], name: ["string", false] },
  subscribe: {
    channel: ["string", true],
    token: ["string", false],
    recover: ["boolean", false],
    epoch: ["string", false],
    offset: ["int", false],
  },
  unsubscribe: { channel: ["string", true] },
  publish: { channel: ["string", true], data: ["any", true], idempotency_key: ["string", false] },
  presence: { channel: ["string", true], cursor: ["string", false], count_only: ["boolean", false] },
  history: {
    channel: ["string", true],
    epoch: ["string", false],
    offset: ["int", false],
    limit: ["int", false],
  },
  rpc: { method: ["string", true], data: ["any", false] },
  send: { data: ["any", true] },
  ping: {},
  refresh: { token: ["string", true] },
};

/** @param {object} obj @param {string} key */
export const hasOwn = (obj, key) => Object.prototype.hasOwnProperty.call(obj, key);

/** @param {unknown} v @returns {v is Record<string, any>} */
export function isObject(v) {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?:^|[^\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** @param {string} s */
function hasLoneSurrogate(s) {
  // @ts-ignore: isWellFormed is recent (ES2024)
  if (typeof s.isWellFormed === "function") return !s.isWellFormed();
  return LONE_SURROGATE.test(s);
}

/** @param {string} message */
function badArgument(message) {
  return new BackchannelError(ErrorCode.BAD_ARGUMENT, message, false, "encode");
}

/**
 * JSON text for a value, refusing what the hub refuses: numbers that are not finite,
 * strings with a lone UTF-16 surrogate, nesting deeper than MAX_DEPTH.
 * @param {*} value
 * @returns {string}
 */
function stringifyStrict(value) {
  /** @type {string | null} */
  let problem = null;
  let text;
  try {
    text = JSON.stringify(value, function (key, v) {
      if (problem === null) {
        if (key && hasLoneSurrogate(key)) problem = "a member name holds a lone UTF-16 surrogate";
        else if (typeof v === "number" && !Number.isFinite(v)) problem = `${v} is not JSON`;
        else if (typeof v === "string" && hasLoneSurrogate(v)) problem = "a string holds a lone UTF-16 surrogate";
      }
      return v;
    });
  } catch (err) {
    throw badArgument(`cannot encode as JSON: ${errorMessage(err)}`);
  }
  if (problem !== null) throw badArgument(problem);
  if (text === undefined) throw badArgument("cannot encode as JSON");
  // Depth: the params object is level 1; the hub counts it as depth 0 and refuses a
  // value deeper than MAX_DEPTH, so a container at level MAX_DEPTH + 1 may hold nothing.
  let level = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 92) i++; // backslash: skip the escaped character
      else if (c === 34) inString = false;
    } else if (c === 34) inString = true;
    else if (c === 123 || c === 91) {
      level++;
      if (level > MAX_DEPTH) throw badArgument(`nested more than ${MAX_DEPTH} deep`);
    } else if (c === 125 || c === 93) level--;
  }
  return text;
}

/**
 * Checks a command's params against the method's schema, as the hub does.
 * @param {string} method
 * @param {Record<string, any>} params
 */
function checkParams(method, params) {
  const schema = hasOwn(METHODS, method) ? METHODS[/** @type {keyof METHODS} */ (method)] : undefined;
  if (!schema) throw badArgument(`no method ${JSON.stringify(method)}`);
  if (!isObject(params)) throw badArgument("params must be an object");
  for (const name of Object.keys(params)) {
    if (params[name] === undefined) continue; // JSON leaves it out
    if (!hasOwn(schema, name)) throw badArgument(`unknown parameter ${JSON.stringify(name)} for ${method}`);
    const [kind] = /** @type {Record<string, [string, boolean]>} */ (schema)[name];
    const value = params[name];
    if (kind === "any") continue;
    if (value === null) throw badArgument(`parameter ${name} cannot be null (leave it out)`);
    if (kind === "int" && !(Number.isSafeInteger(value) && value >= 0)) {
      throw badArgument(`parameter ${name} must be a non-negative integer`);
    }
    if (kind === "string" && typeof value !== "string") throw badArgument(`parameter ${name} must be a string`);
    if (kind === "boolean" && typeof value !== "boolean") throw badArgument(`parameter ${name} must be a boolean`);
  }
  for (const [name, [, required]] of Object.entries(schema)) {
    if (required && params[name] === undefined) throw badArgument(`missing parameter ${name} for ${method}`);
  }
}

/**
 * The text of a command after its id: `"method":...,"params":...}`. Checked once, so
 * that a command waiting for its connection can get its id later.
 * @param {string} method
 * @param {Record<string, any>} [params]
 * @returns {string}
 */
export function prepareCommand(method, params) {
  if (typeof method !== "string") throw badArgument("a method is a string");
  const p = params === undefined ? {} : params;
  checkParams(method, p);
  const hasParams = Object.keys(p).some((k) => p[k] !== undefined);
  return `"method":${JSON.stringify(method)}${hasParams ? `,"params":${stringifyStrict(p)}` : ""}}`;
}

/** @param {number} id @param {string} tail */
export function withId(id, tail) {
  return `{"id":${id},${tail}`;
}

/**
 * Encodes one command as a line of wire text. Throws a BackchannelError (code
 * BAD_ARGUMENT) for anything the hub would refuse: an id that is not an integer from 1
 * to 2^53 - 1, an unknown method, params of the wrong type, unknown params, null for an
 * optional param, numbers that are not finite, lone surrogates, too deep nesting.
 * @param {number} id
 * @param {string} method
 * @param {Record<string, any>} [params] left out of the text when empty
 * @returns {string}
 */
export function encodeCommand(id, method, params) {
  if (!(Number.isSafeInteger(id) && id >= 1)) throw badArgument("an id is an integer from 1 to 2**53 - 1");
  return withId(id, prepareCommand(method, params));
}

/**
 * Joins encoded commands into one frame (at most MAX_BATCH).
 * @param {string[]} lines
 * @returns {string}
 */
export function encodeFrame(lines) {
  if (lines.length === 0) throw badArgument("a frame holds at least one command");
  if (lines.length > MAX_BATCH) throw badArgument(`a frame holds at most ${MAX_BATCH} commands`);
  return lines.join("\n");
}

// ---------------------------------------------------------------------------------------
// Decoding replies and pushes.

/**
 * A reply to a command: a result or an error.
 * @typedef {{id: number, result: Record<string, any>} | {id: number, error: {code: number, message: string, temporary: boolean}}} Reply
 */
/**
 * A push: `push` names its kind; the other members are the push's.
 * @typedef {{push: string, [member: string]: any}} Push
 */

/** @param {string} message */
function badResponse(message) {
  return new BackchannelError(ErrorCode.BAD_RESPONSE, message, false, "decode");
}

const BLANK = /^[ \t\r]*$/;

/**
 * Decodes one line of a server frame into a reply or a push; null for a blank line.
 * Throws a BackchannelError (BAD_RESPONSE) for a line that is neither.
 * A disconnect push without `reconnect` gets it from its code's range.
 * @param {string} line
 * @returns {Reply | Push | null}
 */
export function decodeLine(line) {
  if (BLANK.test(line)) return null;
  let obj;
  try {
    obj = JSON.parse(line);
  } catch (err) {
    throw badResponse(`malformed JSON from the server: ${errorMessage(err)}`);
  }
  if (!isObject(obj)) throw badResponse("a server message is a JSON object");
  if (hasOwn(obj, "id")) {
    const id = obj.id;
    if (!(Number.isSafeInteger(id) && id >= 1)) throw badResponse("a reply's id is a positive integer");
    if (hasOwn(obj, "result") === hasOwn(obj, "error")) throw badResponse("a reply has a result or an error");
    if (hasOwn(obj, "result")) {
      if (!isObject(obj.result)) throw badResponse("a result is an object");
      return { id, result: obj.result };
    }
    const e = obj.error;
    if (!isObject(e) || !Number.isSafeInteger(e.code)) throw badResponse("an error has an integer code");
    return {
      id,
      error: {
        code: e.code,
        message: typeof e.message === "string" ? e.message : "",
        temporary: e.temporary === true,
      },
    };
  }
  if (typeof obj.push !== "string") throw badResponse("a server message has an id or a push");
  switch (obj.push) {
    case "publication":
      if (typeof obj.channel !== "string" || !hasOwn(obj, "data")) throw badResponse("bad publication");
      if (hasOwn(obj, "offset") && !Number.isSafeInteger(obj.offset)) throw badResponse("bad publication offset");
      break;
    case "join":
    case "leave":
      if (typeof obj.channel !== "string" || !isObject(obj.info)) throw badResponse(`bad ${obj.push}`);
      break;
    case "unsubscribe":
      if (typeof obj.channel !== "string" || !Number.isSafeInteger(obj.code)) throw badResponse("bad unsubscribe");
      if (typeof obj.reason !== "string") obj.reason = "";
      break;
    case "dropped":
    case "subscribe":
      if (typeof obj.channel !== "string") throw badResponse(`bad ${obj.push}`);
      // The position is optional (a channel without history), but whole when present.
      if (hasOwn(obj, "offset") !== hasOwn(obj, "epoch")) throw badResponse(`bad ${obj.push} position`);
      if (hasOwn(obj, "offset") && !(Number.isSafeInteger(obj.offset) && typeof obj.epoch === "string")) {
        throw badResponse(`bad ${obj.push} position`);
      }
      break;
    case "disconnect":
      if (!Number.isSafeInteger(obj.code)) throw badResponse("bad disconnect");
      if (typeof obj.reason !== "string") obj.reason = "";
      if (typeof obj.reconnect !== "boolean") obj.reconnect = shouldReconnect(obj.code);
      break;
    default:
    // A kind this version does not know: passed on, the client ignores it.
  }
  return /** @type {Push} */ (obj);
}

/**
 * Decodes a whole server frame (lines separated by "\n"; blank lines skipped).
 * @param {string} text
 * @returns {Array<Reply | Push>}
 */
export function decodeFrame(text) {
  /** @type {Array<Reply | Push>} */
  const out = [];
  for (const line of text.split("\n")) {
    const msg = decodeLine(line);
    if (msg !== null) out.push(msg);
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Small helpers.

/** @param {unknown} err */
export function errorMessage(err) {
  return err instanceof Error ? err.message : String(err);
}

export function noop() {}

/** @param {string} text */
export function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

