// The client: one connection to the hub that stays up (reconnects with backoff,
// resubscribes and recovers, refreshes its token, falls back to another transport),
// with the outbox that keeps publishes made while disconnected.

import { BackchannelError, DisconnectCode, ErrorCode, MAX_BATCH, PROTOCOL_VERSION, shouldReconnect } from "./codes.js";
import { Outbox, newKey } from "./outbox.js";
import { TAB_TRANSPORT, TabGroup, canShareTabs } from "./tabs.js";
import { MAX_GAP_READS, MAX_HELD, Subscription } from "./subscription.js";
import {
  defaultLongPollUrl,
  defaultSseUrl,
  loadTransportMemory,
  rememberTransport,
  resetTransportMemory,
  transportKind,
} from "./transports.js";
import { decodeLine, encodeCommand, encodeFrame, errorMessage, noop, prepareCommand, withId } from "./wire.js";

/** @typedef {import("./wire.js").Reply} Reply */
/** @typedef {import("./wire.js").Push} Push */
/** @typedef {import("./wire.js").TransportName} TransportName */
/** @typedef {import("./wire.js").ClientState} ClientState */
/** @typedef {import("./wire.js").DisconnectInfo} DisconnectInfo */
/** @typedef {import("./transports.js").TransportHandlers} TransportHandlers */

/** setTimeout's limit (about 24.8 days). */
const MAX_TIMER = 2 ** 31 - 1;
/** Reconnects on the fallback transport between two tries of the first one. */
const WS_RETRY_EVERY = 5;
/** Or try the first transport again after this long on the fallback (ms). */
const WS_RETRY_AFTER = 5 * 60 * 1000;
/** The transports tried, in this order, when options.transports is not given. */
const DEFAULT_TRANSPORTS = ["websocket", "sse", "longpoll"];

/**
 * @typedef {object} ClientOptions
 * @property {string} [token] the connection token (JWT)
 * @property {() => Promise<string>} [getToken] gets a new token: before connecting
 *   without one, when the hub says the token expired (109, 3004), and before it expires
 *   (refresh at 90% of its remaining lifetime). A rejection is reported as an `error`
 *   and tried again later; an empty result closes the client (unauthorized).
 * @property {TransportName[]} [transports] transports by registered name (registerTransport),
 *   tried in this order: when one does not get through, the next; default
 *   ["websocket", "sse", "longpoll"] (those that can work here: SSE needs EventSource)
 * @property {string} [longPollUrl] default: the url's host, http(s), its last path segment /ws replaced by /lp (any other path: /lp)
 * @property {string} [sseUrl] default: the url's host, http(s), its last path segment /ws replaced by /sse (any other path: /sse)
 * @property {number} [minReconnectDelay] ms, default 500
 * @property {number} [maxReconnectDelay] ms, default 20000
 * @property {number} [fallbackTimeout] ms a transport has to bring its first message
 *   before the client tries the next one (a refused upgrade, a stream a proxy holds
 *   back); default 3000
 * @property {string} [name] a name the client gives itself (connect's `name`)
 * @property {number} [timeout] ms a command waits for its reply (and for a connection); default 10000
 * @property {number} [pingInterval] ms between ping commands over WebSocket and SSE; default 25000
 *   (or the connect result's `ping`, in seconds, when the hub sends one)
 * @property {number} [pingTimeout] ms a ping may stay unanswered; default pingInterval + 10000
 * @property {number} [pollTimeout] the server's long-poll hold time in ms; default 25000.
 *   Long polling counts as dead after 2 * pollTimeout + 10000 without an answer.
 * @property {any} [WebSocket] the WebSocket class; default globalThis.WebSocket
 * @property {any} [EventSource] the EventSource class; default globalThis.EventSource
 * @property {any} [fetch] the fetch function; default globalThis.fetch
 * @property {(fn: () => void, ms: number) => any} [setTimeout]
 * @property {(id: any) => void} [clearTimeout]
 * @property {() => number} [random] in [0, 1); default Math.random
 * @property {() => number} [now] ms since the epoch; default Date.now
 * @property {EventTarget | null} [lifecycleTarget] where "online" and "visibilitychange"
 *   are heard (default: the window, in a browser): coming back online or to the
 *   foreground reconnects at once instead of waiting for the backoff, and checks the
 *   heartbeat and token deadlines. null to turn off.
 * @property {() => boolean} [hidden] whether the page is hidden (default: document.hidden):
 *   a hidden page's throttled timers never time the connection out
 * @property {{maxHeld?: number, maxReads?: number}} [gaps] filling gaps in a channel's
 *   offsets: publications held behind a gap at most (default 1000), history reads for
 *   one gap at most (default 10); past either the gap is given up (onRecoveryFailed)
 * @property {boolean | ShareTabsOptions} [shareTabs] one connection for all the tabs of the
 *   origin (off by default): the tab that holds a Web Lock connects, the others' clients
 *   go through it (same API); when it closes another tab takes over and every
 *   subscription recovers. Without Web Locks or BroadcastChannel, a client of its own.
 * @property {boolean | OutboxOptions} [outbox] keep publishes until acknowledged (on by
 *   default; false turns it off): made while disconnected or unanswered when the
 *   connection drops, they are sent again, with the same idempotency key, once the
 *   subscription is back
 */

/** @typedef {import("./outbox.js").OutboxOptions} OutboxOptions */
/** @typedef {import("./tabs.js").ShareTabsOptions} ShareTabsOptions */
/** @typedef {import("./outbox.js").OutboxEntry} OutboxEntry */
/** @typedef {import("./subscription.js").Publication} Publication */
/** @typedef {import("./wire.js").ClientInfo} ClientInfo */

/**
 * The fate of a publish kept in the outbox (the client's `outbox` event): "queued" when
 * accepted, then one of "acknowledged" (with the hub's result), "refused" (with the
 * error: its code says why), "dropped" (the outbox overflowed: error OUTBOX_FULL).
 * @typedef {object} PublishFate
 * @property {"queued" | "acknowledged" | "refused" | "dropped"} status
 * @property {string} key the idempotency key
 * @property {string} channel
 * @property {*} data
 * @property {Record<string, any>} [result]
 * @property {BackchannelError} [error]
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
 * recovers missed publications, refreshes its token, and falls back to the next
 * transport (SSE, then long polling) when WebSocket does not get through.
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
    this._longPollUrl = o.longPollUrl ?? defaultLongPollUrl(url);
    this._sseUrl = o.sseUrl ?? defaultSseUrl(url);
    this._WebSocket = o.WebSocket ?? globalThis.WebSocket;
    this._EventSource = o.EventSource ?? /** @type {any} */ (globalThis).EventSource;
    this._fetch = o.fetch ?? (typeof globalThis.fetch === "function" ? globalThis.fetch.bind(globalThis) : undefined);
    const g = /** @type {any} */ (globalThis);
    /** @type {EventTarget | null} */
    this._lifecycleTarget =
      o.lifecycleTarget !== undefined ? o.lifecycleTarget : typeof g.addEventListener === "function" ? g : null;
    /** @type {TransportName[]} */
    this._transports = (o.transports ?? DEFAULT_TRANSPORTS).filter((t) => {
      const kind = transportKind(t);
      return kind !== undefined && (kind.available === undefined || kind.available(this._transportContext()));
    });
    if (this._transports.length === 0) throw new TypeError("no known transport in options.transports");
    this._minDelay = o.minReconnectDelay ?? 500;
    this._maxDelay = o.maxReconnectDelay ?? 20000;
    this._fallbackTimeout = o.fallbackTimeout ?? 3000;
    this._name = o.name;
    this._timeout = o.timeout ?? 10000;
    this._pingIntervalOption = o.pingInterval ?? 25000;
    this._pingInterval = this._pingIntervalOption;
    this._pingTimeoutOption = o.pingTimeout ?? null;
    this._pollTimeout = o.pollTimeout ?? 25000;
    const st = o.setTimeout ?? ((/** @type {() => void} */ fn, /** @type {number} */ ms) => globalThis.setTimeout(fn, ms));
    const ct = o.clearTimeout ?? ((/** @type {any} */ id) => globalThis.clearTimeout(id));
    this._setTimeout = (/** @type {() => void} */ fn, /** @type {number} */ ms) =>
      st(fn, Math.max(0, Math.min(MAX_TIMER, Math.floor(ms))));
    this._clearTimeout = (/** @type {any} */ id) => {
      if (id !== null && id !== undefined) ct(id);
    };
    this._random = o.random ?? Math.random;
    this._hidden =
      o.hidden ??
      (() => {
        const doc = /** @type {any} */ (globalThis).document;
        return Boolean(doc && doc.visibilityState === "hidden");
      });
    /**
     * Publishes waiting for their acknowledgement (null with `outbox: false`).
     * @type {Outbox | null}
     */
    this.outbox = o.outbox === false ? null : new Outbox(o.outbox === true || o.outbox === undefined ? {} : o.outbox);
    this._gaps = { maxHeld: o.gaps?.maxHeld ?? MAX_HELD, maxReads: o.gaps?.maxReads ?? MAX_GAP_READS };
    for (const [name, value] of Object.entries(this._gaps)) {
      if (!(Number.isSafeInteger(value) && value >= 1)) throw new TypeError(`options.gaps.${name} is a positive integer`);
    }
    /** @type {Map<string, {resolve: (r: any) => void, reject: (e: any) => void}>} */
    this._keptWaiters = new Map();
    /** Keys of kept publishes in flight now. @type {Set<string>} */
    this._keptSending = new Set();
    this._keptTimer = null;
    /** Whether the token was asked for again after a refusal since the last connect. */
    this._tokenRetried = false;
    this._now = o.now ?? Date.now;
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
    /**
     * When the next reconnect attempt is due (ms, on options.now's clock) while waiting
     * out the backoff, else null: a page can show "reconnecting in N s".
     * @type {number | null}
     */
    this.reconnectAt = null;
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

    /** With shareTabs: this tab's part in the group (its client talks to the leader). @type {TabGroup | null} */
    this._tabs = null;
    const share = o.shareTabs === true ? {} : o.shareTabs || null;
    if (share !== null && canShareTabs(share)) {
      // The leader's real connection has the token; this client's goes to the leader.
      const { shareTabs: _, outbox: __, ...realOptions } = o;
      this._tabs = new TabGroup(`${url}#${share.name ?? ""}`, share, this, () => new Client(url, { ...realOptions, outbox: false }));
      this._transports = [TAB_TRANSPORT];
      this._token = null;
      this._getToken = null;
    }
  }

  /**
   * With shareTabs: whether this tab holds the connection the tabs share (null without
   * shareTabs, or where tabs cannot share).
   * @returns {boolean | null}
   */
  get leader() {
    return this._tabs === null ? null : this._tabs.leader;
  }

  // Events.

  /**
   * Adds a listener: "state" (state, previous), "error" (err), "disconnect" (info),
   * "transport" (name).
   * @param {"state" | "error" | "disconnect" | "transport" | "token" | "outbox" | "subscription"} event
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
   * @param {"state" | "error" | "disconnect" | "transport" | "token" | "outbox" | "subscription"} event
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
    if (state !== "disconnected") this.reconnectAt = null; // no backoff to wait out now
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
    this._tabs?.start();
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

  /**
   * The first transport, unless the page remembers that it did not get through: then
   * the one that did, with the first tried again every WS_RETRY_EVERY attempts or
   * after WS_RETRY_AFTER (the network may have changed).
   * @returns {TransportName}
   */
  _chooseTransport() {
    const first = this._transports[0];
    const memory = loadTransportMemory();
    const fallback = this._rememberedFallback();
    if (fallback === null) return first;
    memory.attempts++;
    const since = this._now() - /** @type {number} */ (memory.since);
    if (memory.attempts % WS_RETRY_EVERY === 0 || since >= WS_RETRY_AFTER) return first;
    return fallback;
  }

  /**
   * The transport the page remembers, if this client has it after its first.
   * @returns {TransportName | null}
   */
  _rememberedFallback() {
    const name = loadTransportMemory().fallback;
    return name !== null && this._transports.indexOf(name) > 0 ? name : null;
  }

  /** @returns {import("./transports.js").TransportContext} */
  _transportContext() {
    return {
      url: this.url,
      longPollUrl: this._longPollUrl,
      sseUrl: this._sseUrl,
      WebSocket: this._WebSocket,
      EventSource: this._EventSource,
      fetch: this._fetch,
      timers: { setTimeout: this._setTimeout, clearTimeout: this._clearTimeout },
      lifecycleTarget: this._lifecycleTarget,
    };
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
      this._tabs !== null
        ? this._tabs.transport(handlers)
        : /** @type {import("./transports.js").TransportKind} */ (transportKind(name)).create(this._transportContext(), handlers);
    this._transportObj = transport;
    this._openedName = name;
    this._gotMessage = false;
    this._connectRetried = false;
    const id = this._nextId();
    this._connectId = id;
    const frame = encodeCommand(id, "connect", this._connectParams());
    if (this._nextTransport(name) !== null) {
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

  /**
   * The transport to try when this one does not get through: the next in the list; or,
   * when the first was tried again and still fails, the one the page remembers.
   * @param {TransportName} name
   * @returns {TransportName | null}
   */
  _nextTransport(name) {
    if (this._tabs !== null) return null;
    const i = this._transports.indexOf(name);
    if (i < 0 || i === this._transports.length - 1) return null;
    const remembered = this._rememberedFallback();
    return i === 0 && remembered !== null ? remembered : this._transports[i + 1];
  }

  /** A transport did not get through: the next one, remembered for this page. */
  _fallBack() {
    const next = /** @type {TransportName} */ (this._nextTransport(/** @type {TransportName} */ (this._openedName)));
    rememberTransport(next, this._now());
    this._teardown(new BackchannelError(ErrorCode.CONNECTION_LOST, `falling back to ${next}`, true));
    this._openTransport(next);
  }

  _nextId() {
    this._lastId = this._lastId >= Number.MAX_SAFE_INTEGER ? 1 : this._lastId + 1;
    return this._lastId;
  }

  /** @param {{code: number, reason: string, reconnect?: boolean}} info */
  _onTransportClose(info) {
    this._transportObj = null;
    if (this.state === "connecting" && !this._gotMessage && this._openedName !== null && this._nextTransport(this._openedName) !== null) {
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
        this._emit("token", { code, reason: message, retry: Boolean(this._getToken && !this._connectRetried) });
        if (this._getToken && !this._connectRetried) {
          // "get a new token and connect again on the same connection"
          this._connectRetried = true;
          this._reconnectOnSameConnection();
          return;
        }
      }
      this._emitError(err, "connect");
      // A new token refused as expired too (a backend clock behind, a bad getToken):
      // give up rather than loop; the token event has said why.
      if (temporary && code !== ErrorCode.TOKEN_EXPIRED) {
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
    if (name === this._transports[0]) {
      // The first gets through again; a client whose list does not have the page's
      // fallback after its first (transports: ["longpoll"]) proves nothing about it.
      if (this._rememberedFallback() !== null) resetTransportMemory();
    } else if (this._tabs === null && loadTransportMemory().fallback !== name) {
      rememberTransport(name, this._now());
    }
    this._tokenRetried = false;
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
    if (push.push === "subscribe") {
      this._onServerSubscribe(push);
      return;
    }
    this._subs.get(push.channel)?._onPush(push);
  }

  /**
   * The server subscribed this connection to a channel: a subscription like the
   * application's own from then on (resubscribed, with recovery, after a reconnect),
   * announced with the `subscription` event so that the application sets its callbacks.
   * @param {Push} push
   */
  _onServerSubscribe(push) {
    let sub = this._subs.get(push.channel);
    const created = sub === undefined;
    if (sub === undefined) {
      sub = new Subscription(this, push.channel, {});
      this._subs.set(push.channel, sub);
    }
    if (created) this._emit("subscription", sub);
    if (sub.state !== "unsubscribed") sub._onServerSubscribe(push);
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
    let reconnect = info.reconnect;
    if (info.code === DisconnectCode.TOKEN_EXPIRED || info.code === DisconnectCode.INVALID_TOKEN) {
      this._tokenStale = true;
      // A token the hub refuses may only be stale (a key rotated, a session ended and
      // started again): ask getToken once for a new one before giving up.
      const retry = Boolean(this._getToken) && (info.code === DisconnectCode.TOKEN_EXPIRED || !this._tokenRetried);
      if (info.code === DisconnectCode.INVALID_TOKEN && retry) {
        this._tokenRetried = true;
        reconnect = true;
      }
      this._emit("token", { code: info.code, reason: info.reason, retry: retry && reconnect });
    }
    this._emit("disconnect", { code: info.code, reason: info.reason, reconnect });
    if (!this._active) return; // closed by a listener
    if (!reconnect) {
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
    this.reconnectAt = this._now() + delay; // set first: state listeners may read it
    this._setState("disconnected");
    this._clearTimeout(this._reconnectTimer);
    this._reconnectTimer = this._setTimeout(() => {
      this._reconnectTimer = null;
      this.reconnectAt = null;
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
    // A leader hands the connection over to another tab.
    this._tabs?.stop();
  }

  // The page's lifecycle: back online, back in the foreground.

  /** @param {boolean} on */
  _listenLifecycle(on) {
    const target = this._lifecycleTarget;
    if (!target || on === this._lifecycleOn) return;
    this._lifecycleOn = on;
    for (const type of ["online", "visibilitychange", "resume"]) {
      if (on) target.addEventListener(type, this._onWake);
      else target.removeEventListener(type, this._onWake);
    }
  }

  /** @param {string} type */
  _wake(type) {
    if (type === "visibilitychange" && this._hidden()) return;
    if (this.state === "disconnected" && this._active && this._reconnectTimer !== null) {
      // No point waiting out the backoff: the network or the user is back.
      this._clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
      this._attemptNow();
    } else if (this.state === "connected") {
      this._checkRefreshDue();
      // Timers may have slept: probe the connection now, and measure its deadline from
      // this probe, not from one sent by a throttled timer. A dead connection is then
      // found within pingTimeout and recovered (resubscribed from each position), not
      // started afresh.
      this._probe();
      this._graced = false;
      this._armHeartbeat();
    }
  }

  _probe() {
    this._pingSentAt = this._now();
    this._call("ping", {}, { timeout: null }).catch(noop);
  }

  _pingTimeout() {
    return this._pingTimeoutOption ?? this._pingInterval + 10000;
  }

  // Heartbeat: deadlines measured with now() differences, tolerant of late timers.

  _startHeartbeat() {
    this._lastRecv = this._now();
    this._pingSentAt = null;
    this._graced = false;
    this._armHeartbeat();
  }

  /**
   * Whether liveness is checked with ping commands: on WebSocket and SSE, whose
   * server heartbeats (WebSocket pings, SSE comments) a page cannot see. Long polling's
   * answers come at least every pollTimeout.
   */
  _pings() {
    return this.transport === "websocket" || this.transport === "sse";
  }

  _heartbeatInterval() {
    return this._pings() ? this._pingInterval : this._pollTimeout;
  }

  _armHeartbeat() {
    // Through the leader tab: no network between, and a leader that goes is known by
    // its lock passing to another tab.
    if (this.transport === TAB_TRANSPORT) return;
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
    const probing = this._pingSentAt !== null && this._lastRecv < this._pingSentAt;
    if (this._pings()) {
      overdue = probing && now - /** @type {number} */ (this._pingSentAt) >= this._pingTimeout();
    } else {
      // A probe (after a wake) gives long polling pingTimeout from then to answer.
      const waiting = probing && now - /** @type {number} */ (this._pingSentAt) < this._pingTimeout();
      overdue = now - this._lastRecv >= 2 * this._pollTimeout + 10000 && !waiting;
    }
    if (overdue && this._hidden()) {
      // A hidden page's timers are throttled (to once a minute in Chrome) and its
      // silence proves nothing: probe again and decide when the page is visible, on
      // evidence gathered with timers that run on time (the wake probe).
      this._probe();
      this._graced = false;
      this._armHeartbeat();
      return;
    }
    if (overdue) {
      if (late && !this._graced) {
        this._graced = true;
      } else {
        this._lose({ code: DisconnectCode.CONNECTION_LOST, reason: "no heartbeat from the server", reconnect: true });
        return;
      }
    } else if (this._pings() && (this._pingSentAt === null || this._lastRecv >= this._pingSentAt)) {
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

  // The outbox: publishes kept until acknowledged.

  /**
   * A publish through the outbox: kept (with an idempotency key) until the hub answers
   * it, sent again after each reconnect; the promise settles with its fate.
   * @param {Subscription} sub
   * @param {*} data
   * @param {string} [key]
   * @returns {Promise<any>}
   */
  _publishKept(sub, data, key) {
    const outbox = /** @type {Outbox} */ (this.outbox);
    /** @type {OutboxEntry} */
    const entry = { key: key ?? newKey(), channel: sub.channel, data, created: this._now() };
    try {
      // Refused now what the hub would refuse anyway: it must not wait in the outbox.
      prepareCommand("publish", { channel: entry.channel, data, idempotency_key: entry.key });
    } catch (err) {
      return Promise.reject(err);
    }
    if (this._keptWaiters.has(entry.key)) {
      return Promise.reject(new BackchannelError(ErrorCode.BAD_ARGUMENT, "this idempotency key is waiting already", false, "publish"));
    }
    const { accepted, dropped } = outbox.add(entry);
    if (!accepted) {
      const err = new BackchannelError(ErrorCode.OUTBOX_FULL, `the outbox is full (${outbox.max} publishes)`, true, "publish");
      this._emit("outbox", { status: "dropped", key: entry.key, channel: entry.channel, data, error: err });
      return Promise.reject(err);
    }
    const promise = new Promise((resolve, reject) => this._keptWaiters.set(entry.key, { resolve, reject }));
    this._emit("outbox", { status: "queued", key: entry.key, channel: entry.channel, data });
    if (dropped !== null) {
      const err = new BackchannelError(ErrorCode.OUTBOX_FULL, "dropped from a full outbox for a newer publish", true, "publish");
      this._settleKept(dropped, "dropped", undefined, err);
    }
    this._sendKept(sub.channel);
    return promise;
  }

  /**
   * Sends the kept publishes of a channel (of every channel without one) that can go
   * now: the client is connected and their subscription subscribed.
   * @param {string} [channel]
   */
  _sendKept(channel) {
    if (this.outbox === null || this.state !== "connected") return;
    for (const entry of this.outbox.entries(channel)) {
      if (this._keptSending.has(entry.key)) continue;
      const sub = this._subs.get(entry.channel);
      if (sub === undefined || sub.state !== "subscribed") continue;
      this._keptSending.add(entry.key);
      const params = { channel: entry.channel, data: entry.data, idempotency_key: entry.key };
      this._call("publish", params, { sub }).then(
        (result) => {
          this._keptSending.delete(entry.key);
          this._settleKept(entry, "acknowledged", result);
        },
        (/** @type {BackchannelError} */ err) => {
          this._keptSending.delete(entry.key);
          if (this.outbox === null || !this.outbox.has(entry.key)) return;
          if (err.code === ErrorCode.CONNECTION_LOST || err.code === ErrorCode.CLIENT_CLOSED) return; // goes after the resubscribe
          if (err.code === ErrorCode.TIMEOUT || err.temporary) {
            this._retryKept();
            return;
          }
          this._settleKept(entry, "refused", undefined, err);
        },
      );
    }
  }

  /** A temporary refusal: try the outbox again after a backoff delay. */
  _retryKept() {
    if (this._keptTimer !== null) return;
    const delay = Math.floor(this._random() * Math.min(this._maxDelay, this._minDelay * 4));
    this._keptTimer = this._setTimeout(() => {
      this._keptTimer = null;
      this._sendKept();
    }, delay);
  }

  /**
   * The subscription ended: its kept publishes cannot be sent.
   * @param {string} channel
   * @param {BackchannelError} err
   */
  _refuseKept(channel, err) {
    if (this.outbox === null) return;
    for (const entry of this.outbox.entries(channel)) this._settleKept(entry, "refused", undefined, err);
  }

  /**
   * @param {OutboxEntry} entry
   * @param {"acknowledged" | "refused" | "dropped"} status
   * @param {Record<string, any>} [result]
   * @param {BackchannelError} [error]
   */
  _settleKept(entry, status, result, error) {
    if (this.outbox === null) return;
    // A dropped entry left the outbox already (drop-oldest): its fate is still to tell.
    if (!this.outbox.remove(entry.key) && status !== "dropped") return;
    const waiter = this._keptWaiters.get(entry.key);
    this._keptWaiters.delete(entry.key);
    /** @type {PublishFate} */
    const fate = { status, key: entry.key, channel: entry.channel, data: entry.data };
    if (result !== undefined) fate.result = result;
    if (error !== undefined) fate.error = error;
    this._emit("outbox", fate);
    if (status === "acknowledged") waiter?.resolve(result);
    else waiter?.reject(error);
  }
}

/**
 * A subscription to one channel. Its state is "subscribing" (waiting for a connection,
 * or for the hub's answer), "subscribed", or "unsubscribed" (for good).
 */
