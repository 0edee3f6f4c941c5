// Transports: how frames travel to the hub and back. A registry by name, so that the
// client asks for "websocket", "sse" or "longpoll" (or a transport the page registers)
// rather than knowing each class.

import { DisconnectCode, MAX_BATCH } from "./codes.js";
import { errorMessage, isObject, noop, parseJson } from "./wire.js";

/** @typedef {import("./wire.js").TransportName} TransportName */

/**
 * The URL of an HTTP transport's endpoint ("lp", "sse") beside a WebSocket URL: http(s),
 * same host; a path ending in the segment /ws has it replaced (under a mount,
 * /realtime/ws gives /realtime/lp), any other path is replaced whole (/lp).
 * @param {string} url
 * @param {string} endpoint
 * @returns {string | null}
 */
function httpUrl(url, endpoint) {
  try {
    const base = typeof location === "object" && location ? location.href : undefined;
    const u = new URL(url, base);
    if (u.protocol === "wss:") u.protocol = "https:";
    else if (u.protocol === "ws:") u.protocol = "http:";
    const prefix = u.pathname.endsWith("/ws") ? u.pathname.slice(0, -"/ws".length) : "";
    u.pathname = `${prefix}/${endpoint}`;
    u.search = "";
    u.hash = "";
    return u.toString();
  } catch {
    return null;
  }
}

/**
 * The long-polling URL for a WebSocket URL: same host, http(s), the path's last segment
 * /ws replaced by /lp (`ws://h/realtime/ws` gives `http://h/realtime/lp`); a path that
 * does not end in /ws gives /lp.
 * @param {string} url
 * @returns {string | null}
 */
export function defaultLongPollUrl(url) {
  return httpUrl(url, "lp");
}

/**
 * The Server-Sent Events URL for a WebSocket URL: as defaultLongPollUrl, with /sse
 * (`ws://h/realtime/ws` gives `http://h/realtime/sse`).
 * @param {string} url
 * @returns {string | null}
 */
export function defaultSseUrl(url) {
  return httpUrl(url, "sse");
}

// ---------------------------------------------------------------------------------------
// Remembering, for the page, which transport gets through when the first does not.

/** Where the memory outlives a reload of the tab (sessionStorage). */
const MEMORY_KEY = "backchannel:transport";

export const transportMemory = {
  /** @type {TransportName | null} the transport clients of this page start with (null: their first) */
  fallback: null,
  /** @type {number | null} since when (Date.now()) */
  since: null,
  /** connection attempts since then */
  attempts: 0,
  /** whether the memory was read from sessionStorage (once per page) */
  loaded: false,
};

/** @returns {Storage | null} */
function pageStorage() {
  try {
    // Throws where storage is denied (sandboxed frames, some privacy settings).
    const storage = /** @type {any} */ (globalThis).sessionStorage;
    return storage && typeof storage.getItem === "function" ? storage : null;
  } catch {
    return null;
  }
}

/**
 * The page's memory, read from sessionStorage the first time: a reload keeps using the
 * transport that got through rather than waiting out the first one's failure again.
 * @returns {typeof transportMemory}
 */
export function loadTransportMemory() {
  if (transportMemory.loaded) return transportMemory;
  transportMemory.loaded = true;
  try {
    const kept = parseJson(pageStorage()?.getItem(MEMORY_KEY) ?? "");
    if (isObject(kept) && typeof kept.fallback === "string" && Number.isFinite(kept.since)) {
      transportMemory.fallback = kept.fallback;
      transportMemory.since = kept.since;
      transportMemory.attempts = 0;
    }
  } catch {
    // unreadable: start with the first transport
  }
  return transportMemory;
}

function storeTransportMemory() {
  try {
    const storage = pageStorage();
    if (transportMemory.fallback === null) storage?.removeItem(MEMORY_KEY);
    else storage?.setItem(MEMORY_KEY, JSON.stringify({ fallback: transportMemory.fallback, since: transportMemory.since }));
  } catch {
    // full or denied: the memory lasts for this page only
  }
}

/**
 * Remembers for the page (and the tab's reloads) that clients start with this transport.
 * @param {TransportName} name
 * @param {number} now Date.now()
 */
export function rememberTransport(name, now) {
  loadTransportMemory();
  transportMemory.fallback = name;
  transportMemory.since = now;
  transportMemory.attempts = 0;
  storeTransportMemory();
}

/**
 * Forgets which transport this page fell back to (all clients start with their first
 * transport again). Meant for tests.
 */
export function resetTransportMemory() {
  transportMemory.fallback = null;
  transportMemory.since = null;
  transportMemory.attempts = 0;
  transportMemory.loaded = true;
  storeTransportMemory();
}

/**
 * The transport clients of this page start with because their first did not get
 * through, or null.
 * @returns {TransportName | null}
 */
export function fallbackTransport() {
  return loadTransportMemory().fallback;
}

/**
 * Whether clients of this page currently start with long polling.
 * @returns {boolean}
 */
export function usingLongPollFallback() {
  return fallbackTransport() === "longpoll";
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

export class WebSocketTransport {
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

/**
 * What the long-poll and SSE transports share: commands go by `POST ?sid=`, one at a
 * time so that the hub runs them in the order they were sent, at most MAX_BATCH lines a
 * POST; a refusal ends the session with the server's advice; `DELETE ?sid=` leaves.
 * Each subclass opens its session, receives its own way, and stops in `_stop` (calling
 * `_leave`).
 */
class HttpTransport {
  /**
   * @param {TransportName} name
   * @param {string} url
   * @param {any} fetchImpl
   * @param {TransportHandlers} handlers
   * @param {{send: string, refusal: string}} labels how errors name the transport
   */
  constructor(name, url, fetchImpl, handlers, labels) {
    /** @type {TransportName} */
    this.name = name;
    this._url = url;
    this._fetch = fetchImpl;
    this._handlers = handlers;
    this._labels = labels;
    /** @type {string | null} */
    this._sid = null;
    /** @type {string[]} */
    this._outbox = [];
    this._sending = false;
    this._done = false;
    /** The server said the session is gone (no DELETE needed). */
    this._gone = false;
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

  /** @param {string} frame */
  send(frame) {
    if (this._done) return;
    this._outbox.push(frame);
    this._flush();
  }

  /** One POST at a time, so that the hub runs commands in the order they were sent. */
  _flush() {
    if (this._done || this._sending || this._sid === null || this._outbox.length === 0) return;
    /** @type {string[]} */
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
        this._end(DisconnectCode.CONNECTION_LOST, `${this._labels.send} failed: ${errorMessage(err)}`);
      },
    );
  }

  /** @param {{status: number, text: string}} answer */
  _refused(answer) {
    const body = parseJson(answer.text);
    this._gone = answer.status === 404 || answer.status === 410;
    const why = isObject(body) && typeof body.error === "string" ? body.error : "refused";
    const reconnect = isObject(body) && typeof body.reconnect === "boolean" ? body.reconnect : undefined;
    this._end(DisconnectCode.CONNECTION_LOST, `${this._labels.refusal} ${answer.status}: ${why}`, reconnect);
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

  /** Stops receiving, then leaves the session (the subclass's part). */
  _stop() {
    this._leave();
  }

  _leave() {
    if (this._sid !== null && !this._gone) {
      // Free the session now rather than at the server's idle timeout; keepalive lets
      // the request outlive a page that is closing (pagehide).
      const url = this._with(`sid=${encodeURIComponent(this._sid)}`);
      Promise.resolve()
        .then(() => this._fetch(url, { method: "DELETE", keepalive: true }))
        .catch(noop);
    }
  }
}

/** Failed polls in a row tried again before the session counts as lost. */
const POLL_RETRIES = 2;

export class LongPollTransport extends HttpTransport {
  /**
   * @param {string} url
   * @param {any} fetchImpl
   * @param {{setTimeout: (fn: () => void, ms: number) => any, clearTimeout: (id: any) => void}} timers
   * @param {TransportHandlers} handlers
   */
  constructor(url, fetchImpl, timers, handlers) {
    super("longpoll", url, fetchImpl, handlers, { send: "long-poll send", refusal: "long poll" });
    this._timers = timers;
    /** The last batch number handled: the next poll's ack. */
    this._handled = 0;
    /** @type {AbortController | null} */
    this._poller = null;
    this._retryTimer = null;
    this._errors = 0;
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
    this._leave();
  }
}

/**
 * Server-Sent Events: pushes and replies come on an EventSource (`GET /sse?frame=`, the
 * connect frame in the query, since EventSource can neither POST nor set headers);
 * commands go by `POST /sse?sid=`, one at a time, in order; `DELETE /sse?sid=` leaves.
 * The stream's first events are `retry`, then `session` (the sid for the POSTs).
 *
 * EventSource reconnects by itself after a dropped stream; this transport closes it
 * instead and reports the loss, so that the client reconnects as on any transport:
 * with its backoff, a new session, and each subscription resubscribed with recovery.
 */
export class SseTransport extends HttpTransport {
  /**
   * @param {string} url
   * @param {any} EventSourceImpl
   * @param {any} fetchImpl
   * @param {TransportHandlers} handlers
   * @param {EventTarget | null} [pageTarget] where "pagehide" is heard: the session is left then
   */
  constructor(url, EventSourceImpl, fetchImpl, handlers, pageTarget = null) {
    super("sse", url, fetchImpl, handlers, { send: "SSE send", refusal: "SSE" });
    this._EventSource = EventSourceImpl;
    this._page = pageTarget;
    /** @type {any} */
    this._es = null;
    this._onPageHide = () => this._end(DisconnectCode.CONNECTION_LOST, "the page was hidden", true);
  }

  /** @param {string} firstFrame a frame whose first command is connect */
  open(firstFrame) {
    if (typeof this._EventSource !== "function" || typeof this._fetch !== "function") {
      queueMicrotask(() => this._end(DisconnectCode.CONNECTION_LOST, "EventSource or fetch is not available"));
      return;
    }
    let es;
    try {
      es = new this._EventSource(this._with(`frame=${encodeURIComponent(firstFrame)}`));
    } catch (err) {
      const reason = `cannot open an EventSource: ${errorMessage(err)}`;
      queueMicrotask(() => this._end(DisconnectCode.CONNECTION_LOST, reason));
      return;
    }
    this._es = es;
    es.addEventListener("session", (/** @type {{data: unknown}} */ event) => {
      if (this._done) return;
      const body = parseJson(typeof event.data === "string" ? event.data : "");
      if (!isObject(body) || typeof body.sid !== "string" || !body.sid) {
        this._end(DisconnectCode.CONNECTION_LOST, "bad session event on the event stream");
        return;
      }
      this._sid = body.sid;
      this._handlers.onActivity();
      this._flush();
    });
    es.onmessage = (/** @type {{data: unknown}} */ event) => {
      if (!this._done && typeof event.data === "string") this._handlers.onFrame(event.data);
    };
    // A failed open, a refused answer, a dropped or ended stream: EventSource would try
    // again on its own, with a session the client does not know about. It is closed.
    es.onerror = () => this._end(DisconnectCode.CONNECTION_LOST, this._sid === null ? "event stream failed" : "event stream lost");
    this._page?.addEventListener("pagehide", this._onPageHide);
  }

  _stop() {
    this._page?.removeEventListener("pagehide", this._onPageHide);
    const es = this._es;
    if (es) {
      es.onmessage = es.onerror = null;
      try {
        es.close();
      } catch {
        // closed already
      }
    }
    this._outbox = [];
    this._leave();
  }
}

// ---------------------------------------------------------------------------------------
// The registry.

/**
 * What a transport is given when the client opens it.
 * @typedef {object} TransportContext
 * @property {string} url the hub's WebSocket URL
 * @property {string | null} longPollUrl
 * @property {string | null} sseUrl
 * @property {any} WebSocket
 * @property {any} EventSource
 * @property {any} fetch
 * @property {EventTarget | null} lifecycleTarget where the page's "pagehide" is heard
 * @property {{setTimeout: (fn: () => void, ms: number) => any, clearTimeout: (id: any) => void}} timers
 */

/**
 * A kind of transport: `create` makes one connection's transport (with `open(firstFrame)`,
 * `send(frame)`, `close()` and a `name`); `available` says whether it can work with
 * these options (long polling needs a URL and fetch, SSE an EventSource too).
 * @typedef {object} TransportKind
 * @property {(ctx: TransportContext, handlers: TransportHandlers) => any} create
 * @property {(ctx: TransportContext) => boolean} [available]
 */

/** @type {Map<string, TransportKind>} */
const registry = new Map();

/**
 * Registers a transport under a name that `options.transports` may then list. The three
 * built in are "websocket", "sse" and "longpoll"; registering one of their names replaces it
 * (a test's fake, a page's own transport).
 * @param {string} name
 * @param {TransportKind} kind
 */
export function registerTransport(name, kind) {
  if (typeof name !== "string" || !name) throw new TypeError("a transport's name is a non-empty string");
  if (!kind || typeof kind.create !== "function") throw new TypeError("a transport kind has a create function");
  registry.set(name, kind);
}

/**
 * The transport registered under a name, if any.
 * @param {string} name
 * @returns {TransportKind | undefined}
 */
export function transportKind(name) {
  return registry.get(name);
}

registerTransport("websocket", {
  create: (ctx, handlers) => new WebSocketTransport(ctx.url, ctx.WebSocket, handlers),
});
registerTransport("longpoll", {
  create: (ctx, handlers) =>
    new LongPollTransport(/** @type {string} */ (ctx.longPollUrl), ctx.fetch, ctx.timers, handlers),
  available: (ctx) => ctx.longPollUrl !== null,
});
registerTransport("sse", {
  create: (ctx, handlers) =>
    new SseTransport(/** @type {string} */ (ctx.sseUrl), ctx.EventSource, ctx.fetch, handlers, ctx.lifecycleTarget),
  available: (ctx) => ctx.sseUrl !== null && typeof ctx.EventSource === "function" && typeof ctx.fetch === "function",
});
