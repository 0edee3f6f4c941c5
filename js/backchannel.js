// The browser client of backchannel's hub: wire format v1 (docs/protocol.md) over
// WebSocket, with long polling as a fallback. One plain ES module, no dependencies.

/**
 * @typedef {"disconnected" | "connecting" | "connected" | "closed"} ClientState
 * @typedef {"subscribing" | "subscribed" | "unsubscribed"} SubscriptionState
 * @typedef {"websocket" | "longpoll"} TransportName
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

/** The protocol version this client speaks. */
export const PROTOCOL_VERSION = 1;
/** At most this many commands in one frame. */
export const MAX_BATCH = 100;
/** Nesting the hub accepts in a command's params. */
export const MAX_DEPTH = 32;

/**
 * Error codes. Below 100: the client's own; 100-999: the hub's; 1000-1999: the application's.
 */
export const ErrorCode = Object.freeze({
  /** No reply in time (the command may still have run). Temporary. */
  TIMEOUT: 1,
  /** The client was closed before the command could be answered. */
  CLIENT_CLOSED: 2,
  /** The connection dropped before the reply came (the command may have run). Temporary. */
  CONNECTION_LOST: 3,
  /** The subscription is not active any more (unsubscribed). */
  SUBSCRIPTION_CLOSED: 4,
  /** An argument cannot be sent (not JSON, NaN, a lone surrogate, too deep, bad type). */
  BAD_ARGUMENT: 5,
  /** The server sent something this client cannot understand. */
  BAD_RESPONSE: 6,
  INTERNAL: 100,
  UNAUTHORIZED: 101,
  UNKNOWN_CHANNEL: 102,
  PERMISSION_DENIED: 103,
  METHOD_NOT_FOUND: 104,
  ALREADY_SUBSCRIBED: 105,
  LIMIT_EXCEEDED: 106,
  BAD_REQUEST: 107,
  NOT_AVAILABLE: 108,
  TOKEN_EXPIRED: 109,
  NOT_SUBSCRIBED: 110,
  TOO_MANY_REQUESTS: 111,
  UNRECOVERABLE_POSITION: 112,
  MESSAGE_TOO_LARGE: 113,
  NOT_CONNECTED: 114,
  ALREADY_CONNECTED: 115,
  UNAVAILABLE: 116,
  UNSUBSCRIBED: 117,
});

/** Disconnect codes: the hub's (3000-3999), and two WebSocket codes the client uses itself. */
export const DisconnectCode = Object.freeze({
  /** The client closed the connection (client.close()). */
  NORMAL_CLOSURE: 1000,
  /** The connection was lost: network error, no heartbeat, a long-poll session gone. */
  CONNECTION_LOST: 1006,
  SHUTDOWN: 3000,
  SERVER_ERROR: 3001,
  SLOW_CONSUMER: 3002,
  IDLE_TIMEOUT: 3003,
  TOKEN_EXPIRED: 3004,
  CONNECT_TIMEOUT: 3005,
  FORCE_RECONNECT: 3006,
  INVALID_TOKEN: 3500,
  BAD_PROTOCOL: 3501,
  UNSUPPORTED_VERSION: 3502,
  FORCE_DISCONNECT: 3503,
  CONNECTION_LIMIT: 3504,
  FLOOD: 3505,
});

/**
 * Whether a disconnect code asks the client to connect again: 3000-3499 and 4000-4499
 * yes, 3500-3999 and 4500-4999 no; any other code (a network failure, 1006) yes.
 * @param {number} code
 * @returns {boolean}
 */
export function shouldReconnect(code) {
  if (code >= 3500 && code < 4000) return false;
  if (code >= 4500 && code < 5000) return false;
  return true;
}

/**
 * An error answering a command, or one the client raises itself. Its `code`,
 * `message` and `temporary` are those of the wire's error object.
 */
export class BackchannelError extends Error {
  /**
   * @param {number} code an {@link ErrorCode} (or a disconnect code, for a disconnect)
   * @param {string} message
   * @param {boolean} [temporary] whether trying again later may succeed
   * @param {string} [context] where it happened: "connect", "refresh", "subscribe", ...
   */
  constructor(code, message, temporary = false, context = undefined) {
    super(message);
    this.name = "BackchannelError";
    /** @type {number} */
    this.code = code;
    /** @type {boolean} */
    this.temporary = temporary;
    /** @type {string | undefined} */
    this.context = context;
  }
}

// ---------------------------------------------------------------------------------------
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
  presence: { channel: ["string", true] },
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

const hasOwn = (obj, key) => Object.prototype.hasOwnProperty.call(obj, key);

/** @param {unknown} v @returns {v is Record<string, any>} */
function isObject(v) {
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
    const [kind] = schema[name];
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
function prepareCommand(method, params) {
  if (typeof method !== "string") throw badArgument("a method is a string");
  const p = params === undefined ? {} : params;
  checkParams(method, p);
  const hasParams = Object.keys(p).some((k) => p[k] !== undefined);
  return `"method":${JSON.stringify(method)}${hasParams ? `,"params":${stringifyStrict(p)}` : ""}}`;
}

/** @param {number} id @param {string} tail */
function withId(id, tail) {
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
function errorMessage(err) {
  return err instanceof Error ? err.message : String(err);
}

function noop() {}

/** @param {string} text */
function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** setTimeout's limit (about 24.8 days). */
const MAX_TIMER = 2 ** 31 - 1;

/**
 * The long-polling URL for a WebSocket URL: same host, http(s), path /lp.
 * @param {string} url
 * @returns {string | null}
 */
export function defaultLongPollUrl(url) {
  try {
    const base = typeof location === "object" && location ? location.href : undefined;
    const u = new URL(url, base);
    if (u.protocol === "wss:") u.protocol = "https:";
    else if (u.protocol === "ws:") u.protocol = "http:";
    u.pathname = "/lp";
    u.search = "";
    u.hash = "";
    return u.toString();
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------
// Remembering, for the page, that WebSocket does not get through.

/** Reconnects on long polling between two tries of WebSocket. */
const WS_RETRY_EVERY = 5;
/** Or try WebSocket again after this long on long polling (ms). */
const WS_RETRY_AFTER = 5 * 60 * 1000;

const transportMemory = {
  /** @type {number | null} when the page fell back to long polling (Date.now()) */
  longPollSince: null,
  /** connection attempts since then */
  attempts: 0,
};

/**
 * Forgets that this page fell back to long polling (all clients start with WebSocket
 * again). Meant for tests.
 */
export function resetTransportMemory() {
  transportMemory.longPollSince = null;
  transportMemory.attempts = 0;
}

/**
 * Whether clients of this page currently start with long polling.
 * @returns {boolean}
 */
export function usingLongPollFallback() {
  return transportMemory.longPollSince !== null;
}

// ---------------------------------------------------------------------------------------
// Transports. Each calls handlers.onFrame(text) for a server frame and, once,
// handlers.onClose({code, reason, reconnect?}) when it ends by itself (not after close()).

/**
 * @typedef {object} TransportHandlers
 * @property {(text: string) => void} onFrame
 * @property {() => void} onActivity the server answered (a poll, even empty)
 * @property {(info: {code: number, reason: string, reconnect?: boolean}) => void} onClose
 */

class WebSocketTransport {
  /**
   * @param {string} url
   * @param {any} WebSocketImpl
   * @param {TransportHandlers} handlers
   */
  constructor(url, WebSocketImpl, handlers) {
    /** @type {TransportName} */
    this.name = "websocket";
    this._url = url;
    this._WebSocket = WebSocketImpl;
    this._handlers = handlers;
    /** @type {any} */
    this._ws = null;
    this._open = false;
    this._done = false;
    /** @type {string[]} */
    this._queue = [];
  }

  /** @param {string} firstFrame sent as soon as the socket is open */
  open(firstFrame) {
    let ws;
    try {
      ws = new this._WebSocket(this._url);
    } catch (err) {
      const reason = `cannot open a WebSocket: ${errorMessage(err)}`;
      queueMicrotask(() => this._end(DisconnectCode.CONNECTION_LOST, reason));
      return;
    }
    this._ws = ws;
    ws.onopen = () => {
      if (this._done) return;
      this._open = true;
      this._write(firstFrame);
      const queued = this._queue;
      this._queue = [];
      for (const frame of queued) this._write(frame);
    };
    ws.onmessage = (/** @type {{data: unknown}} */ event) => {
      // Version 1 is text only: anything else is ignored.
      if (!this._done && typeof event.data === "string") this._handlers.onFrame(event.data);
    };
    ws.onerror = noop; // a close event follows
    ws.onclose = (/** @type {{code?: number, reason?: string}} */ event) => {
      const code = typeof event?.code === "number" ? event.code : DisconnectCode.CONNECTION_LOST;
      this._end(code, event?.reason || "WebSocket closed");
    };
  }

  /** @param {string} frame */
  send(frame) {
    if (this._done) return;
    if (this._open) this._write(frame);
    else this._queue.push(frame);
  }

  /** @param {string} frame */
  _write(frame) {
    try {
      this._ws.send(frame);
    } catch (err) {
      this._end(DisconnectCode.CONNECTION_LOST, `WebSocket send failed: ${errorMessage(err)}`);
    }
  }

  close() {
    if (this._done) return;
    this._done = true;
    this._detach();
    try {
      this._ws?.close(1000);
    } catch {
      // already closed
    }
  }

  /** @param {number} code @param {string} reason */
  _end(code, reason) {
    if (this._done) return;
    this._done = true;
    this._detach();
    try {
      this._ws?.close();
    } catch {
      // already closed
    }
    this._handlers.onClose({ code, reason });
  }

  _detach() {
    const ws = this._ws;
    if (ws) ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
  }
}

/** Failed polls in a row tried again before the session counts as lost. */
const POLL_RETRIES = 2;

class LongPollTransport {
  /**
   * @param {string} url
   * @param {any} fetchImpl
   * @param {{setTimeout: (fn: () => void, ms: number) => any, clearTimeout: (id: any) => void}} timers
   * @param {TransportHandlers} handlers
   */
  constructor(url, fetchImpl, timers, handlers) {
    /** @type {TransportName} */
    this.name = "longpoll";
    this._url = url;
    this._fetch = fetchImpl;
    this._timers = timers;
    this._handlers = handlers;
    /** @type {string | null} */
    this._sid = null;
    /** The last batch number handled: the next poll's ack. */
    this._handled = 0;
    /** @type {string[]} */
    this._outbox = [];
    this._sending = false;
    this._done = false;
    /** The server said the session is gone (no DELETE needed). */
    this._gone = false;
    /** @type {AbortController | null} */
    this._poller = null;
    this._retryTimer = null;
    this._errors = 0;
  }

  /** @param {string} query */
  _with(query) {
    return this._url + (this._url.includes("?") ? "&" : "?") + query;
  }

  /**
   * @param {string} url
   * @param {Record<string, any>} init
   * @returns {Promise<{ok: boolean, status: number, text: string}>}
   */
  async _request(url, init) {
    const response = await this._fetch(url, init);
    const text = await response.text();
    return { ok: response.ok, status: response.status, text };
  }

  /** @param {string} firstFrame a frame whose first command is connect */
  open(firstFrame) {
    if (typeof this._fetch !== "function") {
      queueMicrotask(() => this._end(DisconnectCode.CONNECTION_LOST, "fetch is not available"));
      return;
    }
    this._request(this._url, { method: "POST", body: firstFrame, cache: "no-store" }).then(
      (answer) => {
        if (this._done) return;
        if (!answer.ok) return this._refused(answer);
        const body = parseJson(answer.text);
        if (!isObject(body) || typeof body.sid !== "string" || !body.sid) {
          return this._end(DisconnectCode.CONNECTION_LOST, "bad answer to the long-poll open");
        }
        this._sid = body.sid;
        this._handled = Number.isSafeInteger(body.ack) && body.ack >= 0 ? body.ack : 0;
        this._poll();
        this._flush();
      },
      (err) => this._end(DisconnectCode.CONNECTION_LOST, `long-poll open failed: ${errorMessage(err)}`),
    );
  }

  _poll() {
    if (this._done || this._sid === null) return;
    const controller = typeof AbortController === "function" ? new AbortController() : null;
    this._poller = controller;
    const url = this._with(`sid=${encodeURIComponent(this._sid)}&ack=${this._handled}`);
    this._request(url, { method: "GET", cache: "no-store", signal: controller?.signal }).then(
      (answer) => {
        if (this._done) return;
        if (!answer.ok) return this._refused(answer);
        this._errors = 0;
        this._handlers.onActivity(); // even an empty answer shows the server is there
        if (this._batch(answer.text)) this._poll();
      },
      (err) => {
        if (this._done) return;
        // The answer may be lost on the way: the server sends the batch again.
        this._errors++;
        if (this._errors > POLL_RETRIES) {
          return this._end(DisconnectCode.CONNECTION_LOST, `long poll failed: ${errorMessage(err)}`);
        }
        this._retryTimer = this._timers.setTimeout(() => {
          this._retryTimer = null;
          this._poll();
        }, 1000 * this._errors);
      },
    );
  }

  /**
   * Handles a poll's answer: `{"batch": K}` then wire lines. A batch number already
   * handled (sent again, or an empty answer) brings nothing new.
   * @param {string} text
   * @returns {boolean} whether to poll again
   */
  _batch(text) {
    const nl = text.indexOf("\n");
    const head = parseJson(nl < 0 ? text : text.slice(0, nl));
    const batch = isObject(head) ? head.batch : undefined;
    if (!(Number.isSafeInteger(batch) && batch >= 0)) {
      this._end(DisconnectCode.CONNECTION_LOST, "bad long-poll answer (no batch number)");
      return false;
    }
    if (batch > this._handled) {
      this._handled = batch;
      if (nl >= 0) this._handlers.onFrame(text.slice(nl + 1));
    }
    return !this._done;
  }

  /** @param {{status: number, text: string}} answer */
  _refused(answer) {
    const body = parseJson(answer.text);
    this._gone = answer.status === 404 || answer.status === 410;
    const why = isObject(body) && typeof body.error === "string" ? body.error : "refused";
    /** @type {{code: number, reason: string, reconnect?: boolean}} */
    const info = { code: DisconnectCode.CONNECTION_LOST, reason: `long poll ${answer.status}: ${why}` };
    if (isObject(body) && typeof body.reconnect === "boolean") info.reconnect = body.reconnect;
    this._end(info.code, info.reason, info.reconnect);
  }

  /** @param {string} frame */
  send(frame) {
    if (this._done) return;
    this._outbox.push(frame);
    this._flush();
  }

  /** One POST at a time, so that the hub runs commands in the order they were sent. */
  _flush() {
    if (this._done || this._sending || this._sid === null || this._outbox.length === 0) return;
    const parts = [];
    let lines = 0;
    while (this._outbox.length > 0) {
      const n = this._outbox[0].split("\n").length;
      if (parts.length > 0 && lines + n > MAX_BATCH) break;
      parts.push(/** @type {string} */ (this._outbox.shift()));
      lines += n;
    }
    this._sending = true;
    const url = this._with(`sid=${encodeURIComponent(this._sid)}`);
    this._request(url, { method: "POST", body: parts.join("\n"), cache: "no-store" }).then(
      (answer) => {
        this._sending = false;
        if (this._done) return;
        if (!answer.ok) return this._refused(answer);
        this._flush();
      },
      (err) => {
        this._sending = false;
        this._end(DisconnectCode.CONNECTION_LOST, `long-poll send failed: ${errorMessage(err)}`);
      },
    );
  }

  close() {
    if (this._done) return;
    this._done = true;
    this._stop();
  }

  /** @param {number} code @param {string} reason @param {boolean} [reconnect] */
  _end(code, reason, reconnect) {
    if (this._done) return;
    this._done = true;
    this._stop();
    /** @type {{code: number, reason: string, reconnect?: boolean}} */
    const info = { code, reason };
    if (reconnect !== undefined) info.reconnect = reconnect;
    this._handlers.onClose(info);
  }

  _stop() {
    if (this._retryTimer !== null) {
      this._timers.clearTimeout(this._retryTimer);
      this._retryTimer = null;
    }
    try {
      this._poller?.abort();
    } catch {
      // nothing to abort
    }
    this._poller = null;
    if (this._sid !== null && !this._gone) {
      // Free the session now rather than at the server's idle timeout; keepalive lets
      // the request outlive a page that is closing.
      const url = this._with(`sid=${encodeURIComponent(this._sid)}`);
      Promise.resolve()
        .then(() => this._fetch(url, { method: "DELETE", keepalive: true }))
        .catch(noop);
    }
  }
}

// ---------------------------------------------------------------------------------------
// The client.

/**
 * @typedef {object} ClientOptions
 * @property {string} [token] the connection token (JWT)
 * @property {() => Promise<string>} [getToken] gets a new token: before connecting
 *   without one, when the hub says the token expired (109, 3004), and before it expires
 *   (refresh at 90% of its remaining lifetime). A rejection is reported as an `error`
 *   and tried again later; an empty result closes the client (unauthorized).
 * @property {TransportName[]} [transports] allowed transports; WebSocket is tried first
 * @property {string} [longPollUrl] default: the url's host, http(s), path /lp
 * @property {number} [minReconnectDelay] ms, default 500
 * @property {number} [maxReconnectDelay] ms, default 20000
 * @property {number} [fallbackTimeout] ms a WebSocket has to bring its first message
 *   before the client falls back to long polling; default 3000
 * @property {string} [name] a name the client gives itself (connect's `name`)
 * @property {number} [timeout] ms a command waits for its reply (and for a connection); default 10000
 * @property {number} [pingInterval] ms between ping commands over WebSocket; default 25000
 *   (or the connect result's `ping`, in seconds, when the hub sends one)
 * @property {number} [pingTimeout] ms a ping may stay unanswered; default pingInterval + 10000
 * @property {number} [pollTimeout] the server's long-poll hold time in ms; default 25000.
 *   Long polling counts as dead after 2 * pollTimeout + 10000 without an answer.
 * @property {any} [WebSocket] the WebSocket class; default globalThis.WebSocket
 * @property {any} [fetch] the fetch function; default globalThis.fetch
 * @property {(fn: () => void, ms: number) => any} [setTimeout]
 * @property {(id: any) => void} [clearTimeout]
 * @property {() => number} [random] in [0, 1); default Math.random
 * @property {() => number} [now] ms since the epoch; default Date.now
 * @property {EventTarget | null} [lifecycleTarget] where "online" and "visibilitychange"
 *   are heard (default: the window, in a browser): coming back online or to the
 *   foreground reconnects at once instead of waiting for the backoff, and checks the
 *   heartbeat and token deadlines. null to turn off.
 */

/**
 * @typedef {object} SubscriptionOptions
 * @property {(pub: Publication) => void} [onPublication] each publication, in order,
 *   recovered ones included, never twice
 * @property {(ctx: {channel: string, info: ClientInfo}) => void} [onJoin]
 * @property {(ctx: {channel: string, info: ClientInfo}) => void} [onLeave]
 * @property {(ctx: {channel: string, code: number, reason: string}) => void} [onUnsubscribe]
 *   the subscription ended: by unsubscribe() (code 0), by the server (its code), or
 *   after an error that trying again cannot fix (the error's code)
 * @property {(ctx: SubscribedContext) => void} [onSubscribed] each time it is (re)subscribed
 * @property {(ctx: {channel: string, epoch: string | null, offset: number | null}) => void} [onRecoveryFailed]
 *   after a reconnection, the publications missed could not all be recovered (the
 *   stream's epoch changed, or they are no longer kept): reload the state by other
 *   means. Without this callback, onError gets an UNRECOVERABLE_POSITION (112) error.
 * @property {(err: BackchannelError) => void} [onError]
 * @property {string} [token] a token for this channel (private channels)
 * @property {(ctx: {channel: string, client: string | null}) => Promise<string>} [getToken]
 *   gets a channel token, once per connection (a channel token may be bound to the
 *   connection's client id) and again when the hub says it expired
 * @property {{epoch: string, offset: number}} [since] a position to recover from on the
 *   first subscribe (for example one kept in storage)
 */

/**
 * @typedef {object} SubscribedContext
 * @property {string} channel
 * @property {boolean} recovering whether the subscribe asked for recovery
 * @property {boolean | null} recovered null when not recovering
 * @property {string | null} epoch the stream's position now
 * @property {number | null} offset
 */

/**
 * @typedef {object} PendingCall
 * @property {string} method
 * @property {string} tail
 * @property {(result: any) => void} resolve
 * @property {(err: BackchannelError) => void} reject
 * @property {Subscription | null} sub
 * @property {any} timer
 * @property {number} id
 */

/**
 * A connection to the hub that stays up: it reconnects with backoff, resubscribes and
 * recovers missed publications, refreshes its token, and falls back to long polling
 * when WebSocket does not get through.
 *
 * Events (client.on): `state` (state, previous), `error` (BackchannelError),
 * `disconnect` ({code, reason, reconnect}), `transport` (name, on each connection).
 */
export class Client {
  /**
   * @param {string} url the ws:// or wss:// URL of the hub
   * @param {ClientOptions} [options]
   */
  constructor(url, options = {}) {
    if (typeof url !== "string" || !url) throw new TypeError("Client needs the hub's URL");
    /** The hub's WebSocket URL. */
    this.url = url;
    /** @type {ClientState} */
    this.state = "disconnected";
    /** The client id the hub gave the current connection. @type {string | null} */
    this.clientId = null;
    /** The user the token names ("" when anonymous). @type {string | null} */
    this.user = null;
    /** The transport of the current connection. @type {TransportName | null} */
    this.transport = null;
    /** When the connection's token expires (Unix seconds), from connect or refresh. @type {number | null} */
    this.expires = null;
    /** The same, in this machine's Date.now() time (from the hub's ttl). @type {number | null} */
    this._expiresAt = null;

    const o = options;
    if (o.token !== undefined && typeof o.token !== "string") throw new TypeError("options.token is a string");
    if (o.name !== undefined && typeof o.name !== "string") throw new TypeError("options.name is a string");
    /** @type {string | null} */
    this._token = o.token ?? null;
    this._getToken = o.getToken ?? null;
    /** @type {TransportName[]} */
    this._transports = (o.transports ?? ["websocket", "longpoll"]).filter(
      (t) => t === "websocket" || t === "longpoll",
    );
    if (this._transports.length === 0) throw new TypeError("no known transport in options.transports");
    this._longPollUrl = o.longPollUrl ?? defaultLongPollUrl(url);
    if (this._longPollUrl === null) this._transports = this._transports.filter((t) => t !== "longpoll");
    this._minDelay = o.minReconnectDelay ?? 500;
    this._maxDelay = o.maxReconnectDelay ?? 20000;
    this._fallbackTimeout = o.fallbackTimeout ?? 3000;
    this._name = o.name;
    this._timeout = o.timeout ?? 10000;
    this._pingIntervalOption = o.pingInterval ?? 25000;
    this._pingInterval = this._pingIntervalOption;
    this._pingTimeoutOption = o.pingTimeout ?? null;
    this._pollTimeout = o.pollTimeout ?? 25000;
    this._WebSocket = o.WebSocket ?? globalThis.WebSocket;
    this._fetch = o.fetch ?? (typeof globalThis.fetch === "function" ? globalThis.fetch.bind(globalThis) : undefined);
    const st = o.setTimeout ?? ((/** @type {() => void} */ fn, /** @type {number} */ ms) => globalThis.setTimeout(fn, ms));
    const ct = o.clearTimeout ?? ((/** @type {any} */ id) => globalThis.clearTimeout(id));
    this._setTimeout = (/** @type {() => void} */ fn, /** @type {number} */ ms) =>
      st(fn, Math.max(0, Math.min(MAX_TIMER, Math.floor(ms))));
    this._clearTimeout = (/** @type {any} */ id) => {
      if (id !== null && id !== undefined) ct(id);
    };
    this._random = o.random ?? Math.random;
    this._now = o.now ?? Date.now;
    const g = /** @type {any} */ (globalThis);
    /** @type {EventTarget | null} */
    this._lifecycleTarget =
      o.lifecycleTarget !== undefined ? o.lifecycleTarget : typeof g.addEventListener === "function" ? g : null;
    this._lifecycleOn = false;
    this._onWake = (/** @type {Event} */ event) => this._wake(event.type);

    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
    /** @type {Map<string, Subscription>} */
    this._subs = new Map();
    /** Whether the client wants to be connected (between connect() and close()). */
    this._active = false;
    /** Bumped for each transport: callbacks of an older one are ignored. */
    this._gen = 0;
    /** Bumped by close(): an attempt waiting for getToken stops. */
    this._attemptGen = 0;
    this._lastId = 0;
    /** @type {any} */
    this._transportObj = null;
    /** The name of the transport last opened. @type {TransportName | null} */
    this._openedName = null;
    this._gotMessage = false;
    /** @type {number | null} */
    this._connectId = null;
    this._connectRetried = false;
    this._tokenStale = false;
    this._attempt = 0;
    /** @type {Map<number, PendingCall>} */
    this._inflight = new Map();
    /** @type {PendingCall[]} */
    this._waiting = [];
    /** @type {string[]} */
    this._outbox = [];
    this._flushQueued = false;
    this._reconnectTimer = null;
    this._fallbackTimer = null;
    this._connectTimer = null;
    this._hbTimer = null;
    this._hbDue = 0;
    this._lastRecv = 0;
    /** @type {number | null} */
    this._pingSentAt = null;
    this._graced = false;
    this._refreshTimer = null;
    /** @type {number | null} */
    this._refreshAt = null;
    this._refreshing = false;
    this._refreshFailures = 0;
    /** @type {Promise<void> | null} */
    this._connectPromise = null;
    /** @type {((v?: any) => void) | null} */
    this._connectResolve = null;
    /** @type {((e: any) => void) | null} */
    this._connectReject = null;
  }

  // Events.

  /**
   * Adds a listener: "state" (state, previous), "error" (err), "disconnect" (info),
   * "transport" (name).
   * @param {"state" | "error" | "disconnect" | "transport"} event
   * @param {Function} fn
   * @returns {this}
   */
  on(event, fn) {
    let set = this._listeners.get(event);
    if (!set) this._listeners.set(event, (set = new Set()));
    set.add(fn);
    return this;
  }

  /**
   * Removes a listener.
   * @param {"state" | "error" | "disconnect" | "transport"} event
   * @param {Function} fn
   * @returns {this}
   */
  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
    return this;
  }

  /** @param {string} event @param {...any} args */
  _emit(event, ...args) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (err) {
        if (event !== "error") this._emitError(err, "listener");
      }
    }
  }

  /** @param {unknown} err @param {string} context */
  _emitError(err, context) {
    const e =
      err instanceof BackchannelError
        ? err
        : new BackchannelError(ErrorCode.INTERNAL, errorMessage(err), false, context);
    if (e.context === undefined) e.context = context;
    this._emit("error", e);
  }

  /**
   * Calls an application callback; what it throws becomes an `error` event.
   * @param {Function | undefined} fn
   * @param {...any} args
   */
  _callback(fn, ...args) {
    if (typeof fn !== "function") return;
    try {
      fn(...args);
    } catch (err) {
      this._emitError(err, "callback");
    }
  }

  /** @param {ClientState} state */
  _setState(state) {
    const previous = this.state;
    if (previous === state) return;
    this.state = state;
    this._emit("state", state, previous);
  }

  // Connecting.

  /**
   * Connects (or keeps trying to, with backoff). The promise resolves once connected;
   * it rejects if the client is closed first, or the hub refuses for good.
   * @returns {Promise<void>}
   */
  connect() {
    if (this.state === "connected") return Promise.resolve();
    if (this._connectPromise === null) {
      this._connectPromise = new Promise((resolve, reject) => {
        this._connectResolve = resolve;
        this._connectReject = reject;
      });
      // Failures also come as events: a connect() nobody awaits is not an unhandled rejection.
      this._connectPromise.catch(noop);
    }
    const promise = this._connectPromise;
    this._listenLifecycle(true);
    if (this.state !== "connecting") {
      this._active = true;
      this._clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
      this._attemptNow();
    }
    return promise;
  }

  _settleConnect(/** @type {BackchannelError | null} */ err) {
    const resolve = this._connectResolve;
    const reject = this._connectReject;
    this._connectPromise = this._connectResolve = this._connectReject = null;
    if (err) reject?.(err);
    else resolve?.();
  }

  _attemptNow() {
    this._startAttempt().catch((err) => {
      // A bug, or an option that cannot be encoded: stop rather than loop.
      if (this._active) this._fail(err instanceof BackchannelError ? err : new BackchannelError(ErrorCode.INTERNAL, errorMessage(err), false, "connect"));
    });
  }

  async _startAttempt() {
    this._setState("connecting");
    const attempt = ++this._attemptGen;
    if (this._needToken()) {
      let token;
      try {
        token = await this._fetchToken();
      } catch (err) {
        if (attempt !== this._attemptGen || !this._active) return;
        this._emitError(err, "getToken");
        this._scheduleReconnect();
        return;
      }
      if (attempt !== this._attemptGen || !this._active) return;
      if (token === null) return this._unauthorized();
      this._token = token;
      this._tokenStale = false;
    }
    this._openTransport(this._chooseTransport());
  }

  _needToken() {
    if (!this._getToken) return false;
    if (this._token === null || this._tokenStale) return true;
    return this._expiresAt !== null && this._now() >= this._expiresAt;
  }

  /**
   * Takes the token's expiry from a connect or refresh result. The hub's `ttl` (seconds
   * left) is counted on this machine's clock, so a wrong clock does not matter; `expires`
   * alone is used when there is no `ttl`.
   * @param {any} result
   */
  _setExpiry(result) {
    this.expires = Number.isFinite(result.expires) ? result.expires : null;
    if (this.expires === null) this._expiresAt = null;
    else if (Number.isFinite(result.ttl)) this._expiresAt = this._now() + result.ttl * 1000;
    else this._expiresAt = this.expires * 1000;
  }

  /** @returns {Promise<string | null>} */
  async _fetchToken() {
    const getToken = /** @type {() => Promise<string>} */ (this._getToken);
    const token = await getToken();
    return typeof token === "string" && token ? token : null;
  }

  _unauthorized() {
    this._fail(new BackchannelError(ErrorCode.UNAUTHORIZED, "getToken gave no token", false, "getToken"));
  }

  /** @returns {TransportName} */
  _chooseTransport() {
    const ws = this._transports.includes("websocket");
    const lp = this._transports.includes("longpoll");
    if (!ws) return "longpoll";
    if (!lp || transportMemory.longPollSince === null) return "websocket";
    transportMemory.attempts++;
    const since = this._now() - transportMemory.longPollSince;
    if (transportMemory.attempts % WS_RETRY_EVERY === 0 || since >= WS_RETRY_AFTER) return "websocket";
    return "longpoll";
  }

  _connectParams() {
    /** @type {Record<string, any>} */
    const params = { v: PROTOCOL_VERSION };
    if (this._token !== null) params.token = this._token;
    if (this._name !== undefined) params.name = this._name;
    return params;
  }

  /** @param {TransportName} name */
  _openTransport(name) {
    const gen = ++this._gen;
    /** @type {TransportHandlers} */
    const handlers = {
      onFrame: (text) => {
        if (gen === this._gen) this._onFrame(text);
      },
      onActivity: () => {
        if (gen !== this._gen) return;
        this._onActivity();
        this._checkRefreshDue();
      },
      onClose: (info) => {
        if (gen === this._gen) this._onTransportClose(info);
      },
    };
    const transport =
      name === "websocket"
        ? new WebSocketTransport(this.url, this._WebSocket, handlers)
        : new LongPollTransport(
            /** @type {string} */ (this._longPollUrl),
            this._fetch,
            { setTimeout: this._setTimeout, clearTimeout: this._clearTimeout },
            handlers,
          );
    this._transportObj = transport;
    this._openedName = name;
    this._gotMessage = false;
    this._connectRetried = false;
    const id = this._nextId();
    this._connectId = id;
    const frame = encodeCommand(id, "connect", this._connectParams());
    if (name === "websocket" && this._transports.includes("longpoll")) {
      this._fallbackTimer = this._setTimeout(() => {
        this._fallbackTimer = null;
        if (gen === this._gen && !this._gotMessage) this._fallBack();
      }, this._fallbackTimeout);
    }
    this._armConnectTimer(gen);
    transport.open(frame);
  }

  /** @param {number} gen */
  _armConnectTimer(gen) {
    this._clearTimeout(this._connectTimer);
    this._connectTimer = this._setTimeout(() => {
      this._connectTimer = null;
      if (gen === this._gen && this.state === "connecting") {
        this._lose({ code: DisconnectCode.CONNECTION_LOST, reason: "no answer to connect", reconnect: true });
      }
    }, this._timeout);
  }

  /** WebSocket did not get through: long polling, for this page. */
  _fallBack() {
    transportMemory.longPollSince = this._now();
    transportMemory.attempts = 0;
    this._teardown(new BackchannelError(ErrorCode.CONNECTION_LOST, "falling back to long polling", true));
    this._openTransport("longpoll");
  }

  _nextId() {
    this._lastId = this._lastId >= Number.MAX_SAFE_INTEGER ? 1 : this._lastId + 1;
    return this._lastId;
  }

  /** @param {{code: number, reason: string, reconnect?: boolean}} info */
  _onTransportClose(info) {
    this._transportObj = null;
    if (
      this.state === "connecting" &&
      !this._gotMessage &&
      this._openedName === "websocket" &&
      this._transports.includes("longpoll")
    ) {
      this._fallBack();
      return;
    }
    this._lose({ code: info.code, reason: info.reason, reconnect: info.reconnect ?? shouldReconnect(info.code) });
  }

  // Receiving.

  _onActivity() {
    this._lastRecv = this._now();
    this._graced = false;
  }

  /** @param {string} text */
  _onFrame(text) {
    const gen = this._gen;
    this._onActivity();
    if (!this._gotMessage) {
      this._gotMessage = true;
      this._clearTimeout(this._fallbackTimer);
      this._fallbackTimer = null;
    }
    for (const line of text.split("\n")) {
      if (gen !== this._gen) return; // a disconnect push ended this connection
      let msg;
      try {
        msg = decodeLine(line);
      } catch (err) {
        this._emitError(err, "decode");
        continue;
      }
      if (msg === null) continue;
      if ("id" in msg) this._onReply(/** @type {Reply} */ (msg));
      else this._onPush(/** @type {Push} */ (msg));
    }
    if (gen === this._gen) this._checkRefreshDue();
  }

  /** @param {Reply} reply */
  _onReply(reply) {
    if (reply.id === this._connectId) {
      this._connectId = null;
      this._onConnectReply(reply);
      return;
    }
    const call = this._inflight.get(reply.id);
    if (!call) return; // timed out, or a ping
    this._inflight.delete(reply.id);
    this._clearTimeout(call.timer);
    if ("error" in reply) {
      const { code, message, temporary } = reply.error;
      call.reject(new BackchannelError(code, message, temporary, call.method));
    } else {
      call.resolve(reply.result);
    }
  }

  /** @param {Reply} reply */
  _onConnectReply(reply) {
    if ("error" in reply) {
      const { code, message, temporary } = reply.error;
      const err = new BackchannelError(code, message, temporary, "connect");
      if (code === ErrorCode.TOKEN_EXPIRED) {
        this._tokenStale = true;
        if (this._getToken && !this._connectRetried) {
          // "get a new token and connect again on the same connection"
          this._connectRetried = true;
          this._reconnectOnSameConnection();
          return;
        }
      }
      this._emitError(err, "connect");
      if (temporary || (code === ErrorCode.TOKEN_EXPIRED && this._getToken)) {
        this._lose({ code: DisconnectCode.CONNECTION_LOST, reason: `connect failed: ${message}`, reconnect: true });
      } else {
        this._fail(err);
      }
      return;
    }
    const result = reply.result;
    this._clearTimeout(this._connectTimer);
    this._connectTimer = null;
    this.clientId = typeof result.client === "string" ? result.client : null;
    this.user = typeof result.user === "string" ? result.user : null;
    this._setExpiry(result);
    this._pingInterval =
      Number.isFinite(result.ping) && result.ping > 0 ? result.ping * 1000 : this._pingIntervalOption;
    this._attempt = 0;
    const name = /** @type {TransportName} */ (this._openedName);
    if (name === "websocket") resetTransportMemory(); // WebSocket gets through again
    this.transport = name;
    this._setState("connected");
    this._emit("transport", name);
    if (this.state !== "connected") return; // a listener closed the client
    this._startHeartbeat();
    this._scheduleRefresh();
    this._settleConnect(null);
    for (const sub of [...this._subs.values()]) sub._subscribe();
    this._drainWaiting();
  }

  _reconnectOnSameConnection() {
    const gen = this._gen;
    this._fetchToken().then(
      (token) => {
        if (gen !== this._gen) return;
        if (token === null) return this._unauthorized();
        this._token = token;
        this._tokenStale = false;
        const id = this._nextId();
        this._connectId = id;
        this._armConnectTimer(gen);
        this._transportObj?.send(encodeCommand(id, "connect", this._connectParams()));
      },
      (err) => {
        if (gen !== this._gen) return;
        this._emitError(err, "getToken");
        this._lose({ code: DisconnectCode.CONNECTION_LOST, reason: "getToken failed", reconnect: true });
      },
    );
  }

  /** @param {Push} push */
  _onPush(push) {
    if (push.push === "disconnect") {
      this._lose({ code: push.code, reason: push.reason, reconnect: push.reconnect });
      return;
    }
    if (typeof push.channel !== "string") return;
    this._subs.get(push.channel)?._onPush(push);
  }

  // Sending.

  /**
   * Sends a command once its preconditions hold: the client is connected, and for a
   * call on a subscription, the subscription is subscribed.
   * @param {string} method
   * @param {Record<string, any>} params
   * @param {{sub?: Subscription, timeout?: number | null}} [opts]
   * @returns {Promise<any>}
   */
  _call(method, params, opts = {}) {
    let tail;
    try {
      tail = prepareCommand(method, params);
    } catch (err) {
      return Promise.reject(err);
    }
    if (this.state === "closed") {
      return Promise.reject(new BackchannelError(ErrorCode.CLIENT_CLOSED, "the client is closed", false, method));
    }
    return new Promise((resolve, reject) => {
      /** @type {PendingCall} */
      const call = { method, tail, resolve, reject, sub: opts.sub ?? null, timer: null, id: 0 };
      const timeout = opts.timeout === undefined ? this._timeout : opts.timeout;
      if (timeout !== null && timeout > 0) {
        call.timer = this._setTimeout(() => this._timedOut(call), timeout);
      }
      if (this._canSend(call)) this._sendCall(call);
      else this._waiting.push(call);
    });
  }

  /** @param {PendingCall} call */
  _canSend(call) {
    return this.state === "connected" && (call.sub === null || call.sub.state === "subscribed");
  }

  /** @param {PendingCall} call */
  _sendCall(call) {
    const id = this._nextId();
    call.id = id;
    this._inflight.set(id, call);
    this._enqueue(withId(id, call.tail));
  }

  /** @param {PendingCall} call */
  _timedOut(call) {
    call.timer = null;
    const i = this._waiting.indexOf(call);
    if (i >= 0) this._waiting.splice(i, 1);
    else if (this._inflight.get(call.id) === call) this._inflight.delete(call.id);
    else return;
    call.reject(new BackchannelError(ErrorCode.TIMEOUT, `no reply to ${call.method} in time`, true, call.method));
  }

  _drainWaiting() {
    const waiting = this._waiting;
    this._waiting = [];
    for (const call of waiting) {
      if (this._canSend(call)) this._sendCall(call);
      else this._waiting.push(call);
    }
  }

  /**
   * @param {(call: PendingCall) => boolean} which
   * @param {BackchannelError} err
   */
  _rejectWaiting(which, err) {
    const keep = [];
    for (const call of this._waiting) {
      if (which(call)) {
        this._clearTimeout(call.timer);
        call.reject(err);
      } else keep.push(call);
    }
    this._waiting = keep;
  }

  /** Commands sent in the same task travel together, at most MAX_BATCH a frame. @param {string} line */
  _enqueue(line) {
    this._outbox.push(line);
    if (this._flushQueued) return;
    this._flushQueued = true;
    queueMicrotask(() => {
      this._flushQueued = false;
      const lines = this._outbox;
      this._outbox = [];
      const transport = this._transportObj;
      if (!transport) return;
      for (let i = 0; i < lines.length; i += MAX_BATCH) {
        transport.send(encodeFrame(lines.slice(i, i + MAX_BATCH)));
      }
    });
  }

  // Losing the connection.

  /**
   * Ends the current transport: rejects the commands in flight, stops the timers of
   * the connection, and puts subscriptions back to subscribing.
   * @param {BackchannelError} err
   */
  _teardown(err) {
    this._gen++;
    for (const timer of [this._fallbackTimer, this._connectTimer, this._hbTimer, this._refreshTimer]) {
      this._clearTimeout(timer);
    }
    this._fallbackTimer = this._connectTimer = this._hbTimer = this._refreshTimer = null;
    this._refreshAt = null;
    this._refreshing = false;
    this._connectId = null;
    this._outbox = [];
    const transport = this._transportObj;
    this._transportObj = null;
    try {
      transport?.close();
    } catch {
      // closing anyway
    }
    const inflight = [...this._inflight.values()];
    this._inflight.clear();
    for (const call of inflight) {
      this._clearTimeout(call.timer);
      call.reject(err);
    }
    for (const sub of this._subs.values()) sub._onConnectionLost();
    this.transport = null;
  }

  /** @param {DisconnectInfo} info */
  _lose(info) {
    this._teardown(
      new BackchannelError(ErrorCode.CONNECTION_LOST, `connection lost before the reply (${info.reason})`, true),
    );
    if (info.code === DisconnectCode.TOKEN_EXPIRED) this._tokenStale = true;
    this._emit("disconnect", { code: info.code, reason: info.reason, reconnect: info.reconnect });
    if (!this._active) return; // closed by a listener
    if (!info.reconnect) {
      this._fail(new BackchannelError(info.code, info.reason, false, "disconnect"), false);
      return;
    }
    this._scheduleReconnect();
  }

  /**
   * The client stops for good (until connect() is called again).
   * @param {BackchannelError} err
   * @param {boolean} [teardown]
   */
  _fail(err, teardown = true) {
    if (teardown) {
      const hadTransport = this._transportObj !== null;
      this._teardown(err);
      if (hadTransport) this._emit("disconnect", { code: err.code, reason: err.message, reconnect: false });
    }
    this._active = false;
    this._attemptGen++;
    this._listenLifecycle(false);
    this._clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    this._emitError(err, err.context ?? "connect");
    this._rejectWaiting(() => true, err);
    for (const sub of this._subs.values()) sub._onClientClosed(err);
    this._setState("closed");
    this._settleConnect(err);
  }

  _scheduleReconnect() {
    const cap = Math.min(this._maxDelay, this._minDelay * 2 ** Math.min(this._attempt, 40));
    const delay = Math.floor(this._random() * cap);
    this._attempt++;
    this._setState("disconnected");
    this._clearTimeout(this._reconnectTimer);
    this._reconnectTimer = this._setTimeout(() => {
      this._reconnectTimer = null;
      if (this._active && this.state === "disconnected") this._attemptNow();
    }, delay);
  }

  /**
   * Closes the connection and stops reconnecting. Commands waiting or in flight are
   * rejected (CLIENT_CLOSED); subscriptions are kept and come back on connect().
   */
  close() {
    if (this.state === "closed") return;
    const err = new BackchannelError(ErrorCode.CLIENT_CLOSED, "the client was closed", false, "close");
    this._active = false;
    this._attemptGen++;
    this._listenLifecycle(false);
    this._clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    const hadTransport = this._transportObj !== null;
    this._teardown(err);
    this._rejectWaiting(() => true, err);
    for (const sub of this._subs.values()) sub._onClientClosed(err);
    if (hadTransport) {
      this._emit("disconnect", { code: DisconnectCode.NORMAL_CLOSURE, reason: "closed by the client", reconnect: false });
    }
    this._setState("closed");
    this._settleConnect(err);
  }

  // The page's lifecycle: back online, back in the foreground.

  /** @param {boolean} on */
  _listenLifecycle(on) {
    const target = this._lifecycleTarget;
    if (!target || on === this._lifecycleOn) return;
    this._lifecycleOn = on;
    for (const type of ["online", "visibilitychange"]) {
      if (on) target.addEventListener(type, this._onWake);
      else target.removeEventListener(type, this._onWake);
    }
  }

  /** @param {string} type */
  _wake(type) {
    const doc = /** @type {any} */ (globalThis).document;
    if (type === "visibilitychange" && doc && doc.visibilityState === "hidden") return;
    if (this.state === "disconnected" && this._active && this._reconnectTimer !== null) {
      // No point waiting out the backoff: the network or the user is back.
      this._clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
      this._attemptNow();
    } else if (this.state === "connected") {
      this._checkRefreshDue();
      if (this.transport === "websocket" && (this._pingSentAt === null || this._lastRecv >= this._pingSentAt)) {
        // Timers may have slept: check the connection now.
        this._pingSentAt = this._now();
        this._call("ping", {}, { timeout: null }).catch(noop);
      }
    }
  }

  // Heartbeat: deadlines measured with now() differences, tolerant of late timers.

  _startHeartbeat() {
    this._lastRecv = this._now();
    this._pingSentAt = null;
    this._graced = false;
    this._armHeartbeat();
  }

  _heartbeatInterval() {
    return this.transport === "websocket" ? this._pingInterval : this._pollTimeout;
  }

  _armHeartbeat() {
    const interval = this._heartbeatInterval();
    this._hbDue = this._now() + interval;
    this._clearTimeout(this._hbTimer);
    this._hbTimer = this._setTimeout(() => {
      this._hbTimer = null;
      this._heartbeat();
    }, interval);
  }

  _heartbeat() {
    if (this.state !== "connected") return;
    const now = this._now();
    // A timer that fires much later than asked was throttled (a background tab) or the
    // machine slept: messages may be queued behind it, so give them one more round.
    const late = now - this._hbDue > Math.min(5000, this._heartbeatInterval() / 2);
    let overdue;
    if (this.transport === "websocket") {
      const pingTimeout = this._pingTimeoutOption ?? this._pingInterval + 10000;
      overdue = this._pingSentAt !== null && this._lastRecv < this._pingSentAt && now - this._pingSentAt >= pingTimeout;
    } else {
      overdue = now - this._lastRecv >= 2 * this._pollTimeout + 10000;
    }
    if (overdue) {
      if (late && !this._graced) {
        this._graced = true;
      } else {
        this._lose({ code: DisconnectCode.CONNECTION_LOST, reason: "no heartbeat from the server", reconnect: true });
        return;
      }
    } else if (this.transport === "websocket" && (this._pingSentAt === null || this._lastRecv >= this._pingSentAt)) {
      this._pingSentAt = now;
      this._call("ping", {}, { timeout: null }).catch(noop);
    }
    this._armHeartbeat();
  }

  // Token refresh.

  _scheduleRefresh() {
    this._clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    this._refreshAt = null;
    if (this._expiresAt === null || !this._getToken) return;
    const remaining = this._expiresAt - this._now();
    let delay = remaining * 0.9;
    if (delay < 1000) {
      // Expired already by our clock (or about to): skewed clocks must not make a loop.
      delay = Math.min(this._maxDelay, 1000 * 2 ** Math.min(this._refreshFailures, 20));
      this._refreshFailures++;
    } else {
      this._refreshFailures = 0;
    }
    this._armRefresh(delay);
  }

  /** @param {number} delay */
  _armRefresh(delay) {
    this._clearTimeout(this._refreshTimer);
    this._refreshAt = this._now() + delay;
    this._refreshTimer = this._setTimeout(() => {
      this._refreshTimer = null;
      void this._refresh();
    }, delay);
  }

  /** A throttled timer may fire late: any message from the server checks the clock too. */
  _checkRefreshDue() {
    if (this._refreshAt !== null && !this._refreshing && this._now() >= this._refreshAt) {
      this._clearTimeout(this._refreshTimer);
      this._refreshTimer = null;
      void this._refresh();
    }
  }

  async _refresh() {
    if (this._refreshing || this.state !== "connected") return;
    this._refreshing = true;
    this._refreshAt = null;
    const gen = this._gen;
    try {
      const token = await this._fetchToken();
      if (gen !== this._gen) return;
      if (token === null) {
        this._unauthorized();
        return;
      }
      this._token = token;
      const result = await this._call("refresh", { token });
      if (gen !== this._gen) return;
      this._setExpiry(result);
      this._refreshing = false;
      this._scheduleRefresh();
    } catch (err) {
      if (gen !== this._gen) return;
      this._refreshing = false;
      this._emitError(err, "refresh");
      this._refreshFailures++;
      this._armRefresh(Math.min(this._maxDelay, 1000 * 2 ** Math.min(this._refreshFailures, 20)));
    } finally {
      if (gen === this._gen) this._refreshing = false;
    }
  }

  // The application's API.

  /**
   * Subscribes to a channel (now if connected, else once connected). One subscription
   * per channel: subscribing twice throws.
   * @param {string} channel
   * @param {SubscriptionOptions} [options]
   * @returns {Subscription}
   */
  subscribe(channel, options = {}) {
    if (typeof channel !== "string" || !channel) throw new TypeError("a channel is a non-empty string");
    if (this._subs.has(channel)) throw new Error(`already subscribed to ${channel}`);
    const sub = new Subscription(this, channel, options);
    this._subs.set(channel, sub);
    if (this.state === "connected") sub._subscribe();
    return sub;
  }

  /**
   * The subscription to a channel, if any.
   * @param {string} channel
   * @returns {Subscription | undefined}
   */
  getSubscription(channel) {
    return this._subs.get(channel);
  }

  /**
   * Calls a procedure the application defines on the server; resolves with what it
   * returned (the result's `data`).
   * @param {string} method
   * @param {*} [data]
   * @returns {Promise<any>}
   */
  rpc(method, data) {
    /** @type {Record<string, any>} */
    const params = { method };
    if (data !== undefined) params.data = data;
    return this._call("rpc", params).then((result) => result.data);
  }

  /**
   * Sends data to the application on the server; resolves once acknowledged.
   * @param {*} data
   * @returns {Promise<void>}
   */
  send(data) {
    return this._call("send", { data: data === undefined ? null : data }).then(() => undefined);
  }
}

/**
 * A subscription to one channel. Its state is "subscribing" (waiting for a connection,
 * or for the hub's answer), "subscribed", or "unsubscribed" (for good).
 */
export class Subscription {
  /**
   * @param {Client} client
   * @param {string} channel
   * @param {SubscriptionOptions} options
   */
  constructor(client, channel, options) {
    /** @type {Client} */
    this.client = client;
    /** @type {string} */
    this.channel = channel;
    /** @type {SubscriptionState} */
    this.state = "subscribing";
    /** The epoch of the last publication seen (or of the subscribe result). @type {string | null} */
    this.epoch = options.since?.epoch ?? null;
    /** The offset of the last publication seen (or of the subscribe result). @type {number | null} */
    this.offset = options.since?.offset ?? null;
    this._options = options;
    /** @type {string | null} */
    this._token = options.token ?? null;
    /** @type {string | null} the client id of the connection the token was last used on */
    this._tokenClient = null;
    this._tokenStale = false;
    this._seq = 0;
    this._attempt = 0;
    this._retryTimer = null;
    /** Publications that came before the subscribe result. @type {Publication[]} */
    this._buffer = [];
    /** @type {Array<{resolve: () => void, reject: (e: any) => void}>} */
    this._readyWaiters = [];
  }

  /**
   * Resolves once subscribed; rejects if the subscription ends or the client closes first.
   * @returns {Promise<void>}
   */
  ready() {
    if (this.state === "subscribed") return Promise.resolve();
    if (this.state === "unsubscribed") {
      return Promise.reject(new BackchannelError(ErrorCode.SUBSCRIPTION_CLOSED, "unsubscribed", false, "subscribe"));
    }
    return new Promise((resolve, reject) => this._readyWaiters.push({ resolve, reject }));
  }

  _canRecover() {
    return typeof this.epoch === "string" && Number.isSafeInteger(this.offset) && /** @type {number} */ (this.offset) >= 0;
  }

  _subscribe() {
    this._doSubscribe().catch((err) => this.client._emitError(err, "subscribe"));
  }

  async _doSubscribe() {
    const client = this.client;
    if (this.state === "unsubscribed" || client.state !== "connected") return;
    this._clearRetry();
    const seq = ++this._seq;
    const gen = client._gen;
    const stale = () => seq !== this._seq || gen !== client._gen || this.state === "unsubscribed";
    let token = this._token;
    const getToken = this._options.getToken;
    // A channel token may be bound to the connection's client id: a new connection
    // gets a new one.
    const otherClient = this._tokenClient !== null && this._tokenClient !== client.clientId;
    if (getToken && (token === null || this._tokenStale || otherClient)) {
      try {
        const t = await getToken({ channel: this.channel, client: client.clientId });
        if (stale()) return;
        if (typeof t !== "string" || !t) {
          this._end(ErrorCode.UNAUTHORIZED, "getToken gave no channel token");
          return;
        }
        token = this._token = t;
        this._tokenStale = false;
      } catch (err) {
        if (stale()) return;
        this._error(err instanceof BackchannelError ? err : new BackchannelError(ErrorCode.UNAUTHORIZED, errorMessage(err)));
        this._retryLater();
        return;
      }
    }
    /** @type {Record<string, any>} */
    const params = { channel: this.channel };
    if (token !== null) {
      params.token = token;
      this._tokenClient = client.clientId;
    }
    const recovering = this._canRecover();
    if (recovering) {
      params.recover = true;
      params.epoch = this.epoch;
      params.offset = this.offset;
    }
    client._call("subscribe", params).then(
      (result) => {
        if (!stale()) this._onSubscribed(result, recovering);
      },
      (err) => {
        if (!stale()) this._onSubscribeError(err);
      },
    );
  }

  /** @param {Record<string, any>} result @param {boolean} recovering */
  _onSubscribed(result, recovering) {
    const client = this.client;
    this.state = "subscribed";
    this._attempt = 0;
    /** @type {boolean | null} */
    let recovered = null;
    const before = { epoch: this.epoch, offset: this.offset };
    if (recovering) {
      recovered = result.recovered === true && Array.isArray(result.publications);
      if (recovered) {
        for (const pub of result.publications) {
          if (this.state !== "subscribed") return;
          if (isObject(pub)) this._deliver(/** @type {Publication} */ (pub));
        }
      }
    }
    // The stream's position now: live publications come after it.
    if (typeof result.epoch === "string" && Number.isSafeInteger(result.offset)) {
      this.epoch = result.epoch;
      this.offset = result.offset;
    }
    if (recovered === false) {
      const ctx = { channel: this.channel, epoch: before.epoch, offset: before.offset };
      if (typeof this._options.onRecoveryFailed === "function") client._callback(this._options.onRecoveryFailed, ctx);
      else this._error(new BackchannelError(ErrorCode.UNRECOVERABLE_POSITION, "missed publications could not be recovered", false, "subscribe"));
    }
    if (this.state !== "subscribed") return;
    client._callback(this._options.onSubscribed, {
      channel: this.channel,
      recovering,
      recovered,
      epoch: this.epoch,
      offset: this.offset,
    });
    const buffered = this._buffer;
    this._buffer = [];
    for (const pub of buffered) {
      if (this.state !== "subscribed") return;
      this._deliver(pub);
    }
    const waiters = this._readyWaiters;
    this._readyWaiters = [];
    for (const w of waiters) w.resolve();
    client._drainWaiting();
  }

  /** @param {BackchannelError} err */
  _onSubscribeError(err) {
    const code = err.code;
    if (code === ErrorCode.TOKEN_EXPIRED && this._options.getToken) {
      this._tokenStale = true;
      this._retryLater();
      return;
    }
    if (code === ErrorCode.TIMEOUT) {
      // The hub may have subscribed us after all: unsubscribe first, in order.
      this.client._call("unsubscribe", { channel: this.channel }).catch(noop);
      this._retryLater();
      return;
    }
    if (err.temporary) {
      this._error(err);
      this._retryLater();
      return;
    }
    this._error(err);
    this._end(code, err.message);
  }

  _retryLater() {
    const client = this.client;
    const cap = Math.min(client._maxDelay, client._minDelay * 2 ** Math.min(this._attempt, 40));
    const delay = Math.floor(client._random() * cap);
    this._attempt++;
    this._clearRetry();
    this._retryTimer = client._setTimeout(() => {
      this._retryTimer = null;
      this._subscribe();
    }, delay);
  }

  _clearRetry() {
    this.client._clearTimeout(this._retryTimer);
    this._retryTimer = null;
  }

  /** @param {Publication} pub */
  _deliver(pub) {
    if (Number.isSafeInteger(pub.offset) && /** @type {number} */ (pub.offset) > 0 && typeof pub.epoch === "string") {
      const offset = /** @type {number} */ (pub.offset);
      if (pub.epoch === this.epoch && this.offset !== null && offset <= this.offset) return; // seen already
      this.epoch = pub.epoch;
      this.offset = offset;
    }
    this.client._callback(this._options.onPublication, pub);
  }

  /** @param {Push} push */
  _onPush(push) {
    switch (push.push) {
      case "publication": {
        const { push: _, ...pub } = push;
        if (this.state === "subscribed") this._deliver(/** @type {Publication} */ (pub));
        else if (this.state === "subscribing") this._buffer.push(/** @type {Publication} */ (pub));
        break;
      }
      case "join":
        if (this.state === "subscribed") this.client._callback(this._options.onJoin, { channel: this.channel, info: push.info });
        break;
      case "leave":
        if (this.state === "subscribed") this.client._callback(this._options.onLeave, { channel: this.channel, info: push.info });
        break;
      case "unsubscribe":
        this._end(push.code, push.reason);
        break;
      default:
    }
  }

  _onConnectionLost() {
    if (this.state === "unsubscribed") return;
    this.state = "subscribing";
    this._seq++;
    this._buffer = [];
    this._clearRetry();
  }

  /** @param {BackchannelError} err */
  _onClientClosed(err) {
    this._onConnectionLost();
    const waiters = this._readyWaiters;
    this._readyWaiters = [];
    for (const w of waiters) w.reject(err);
  }

  /** @param {BackchannelError} err */
  _error(err) {
    if (err.context === undefined) err.context = "subscribe";
    this.client._callback(this._options.onError, err);
  }

  /**
   * The subscription ends for good.
   * @param {number} code
   * @param {string} reason
   */
  _end(code, reason) {
    if (this.state === "unsubscribed") return;
    const client = this.client;
    this.state = "unsubscribed";
    this._seq++;
    this._buffer = [];
    this._clearRetry();
    if (client._subs.get(this.channel) === this) client._subs.delete(this.channel);
    const err = new BackchannelError(ErrorCode.SUBSCRIPTION_CLOSED, `unsubscribed from ${this.channel}: ${reason}`, false, "subscribe");
    const waiters = this._readyWaiters;
    this._readyWaiters = [];
    for (const w of waiters) w.reject(err);
    client._rejectWaiting((call) => call.sub === this, err);
    client._callback(this._options.onUnsubscribe, { channel: this.channel, code, reason });
  }

  /**
   * Ends the subscription (onUnsubscribe is called with code 0). To subscribe again,
   * call client.subscribe().
   */
  unsubscribe() {
    if (this.state === "unsubscribed") return;
    const connected = this.client.state === "connected";
    this._end(0, "unsubscribe called");
    if (connected) this.client._call("unsubscribe", { channel: this.channel }).catch(noop);
  }

  /**
   * Publishes data in the channel (once subscribed). Resolves with the hub's result
   * `{offset, epoch?, duplicate?}`; rejects with a BackchannelError `{code, message,
   * temporary}`. With an idempotency key, a publish repeated within the hub's window
   * (after a lost reply) is delivered once.
   * @param {*} data
   * @param {{idempotencyKey?: string}} [options]
   * @returns {Promise<{offset: number, epoch?: string, duplicate?: boolean}>}
   */
  publish(data, options = {}) {
    if (this.state === "unsubscribed") return this._closedError("publish");
    /** @type {Record<string, any>} */
    const params = { channel: this.channel, data: data === undefined ? null : data };
    if (options.idempotencyKey !== undefined) params.idempotency_key = options.idempotencyKey;
    return this.client._call("publish", params, { sub: this });
  }

  /**
   * Who is subscribed: `{clients}` or, in count-only channels, `{count, users}`.
   * @returns {Promise<{clients?: Record<string, ClientInfo>, count?: number, users?: number}>}
   */
  presence() {
    if (this.state === "unsubscribed") return this._closedError("presence");
    return this.client._call("presence", { channel: this.channel }, { sub: this });
  }

  /**
   * Reads the channel's stream: the latest `limit` publications, or with `since` the
   * ones after that position.
   * @param {{limit?: number, since?: {epoch: string, offset: number}}} [options]
   * @returns {Promise<{publications: Publication[], epoch: string, offset: number, recovered: boolean}>}
   */
  history(options = {}) {
    if (this.state === "unsubscribed") return this._closedError("history");
    /** @type {Record<string, any>} */
    const params = { channel: this.channel };
    if (options.limit !== undefined) params.limit = options.limit;
    if (options.since !== undefined) {
      params.epoch = options.since.epoch;
      params.offset = options.since.offset;
    }
    return this.client._call("history", params, { sub: this });
  }

  /** @param {string} method @returns {Promise<never>} */
  _closedError(method) {
    return Promise.reject(
      new BackchannelError(ErrorCode.SUBSCRIPTION_CLOSED, `not subscribed to ${this.channel}`, false, method),
    );
  }
}
