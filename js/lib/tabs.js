// One connection for all the tabs of an origin (opt-in, `shareTabs`): the tab holding a
// Web Lock (the leader) runs the real connection; every tab's client, the leader's own
// included, speaks the hub's protocol to it over a BroadcastChannel, as if the leader
// were the hub. The leader subscribes to a channel once, while any tab wants it, and
// answers a tab's recovering subscribe from history. When the leader's tab goes, its
// lock passes to another tab, which connects; the tabs see a lost connection and
// resubscribe from their own positions, so nothing is missed.

import { DisconnectCode, ErrorCode } from "./codes.js";
import { errorMessage, isObject } from "./wire.js";

/** @typedef {import("./transports.js").TransportHandlers} TransportHandlers */
/** @typedef {import("./client.js").Client} Client */
/** @typedef {import("./subscription.js").Subscription} Subscription */

/**
 * A real subscription's part in the host: the subscription, the error that refused it,
 * and whether it still has to be announced to the clients (one the server made).
 * @typedef {{sub: Subscription | null, refused: any, announce: boolean}} SubHolder
 */

/** The transport name a tab-shared client reports (`client.transport`). */
export const TAB_TRANSPORT = "tab";

/**
 * @typedef {object} LockManager the part of navigator.locks used
 * @property {(name: string, options: {signal?: AbortSignal}, fn: () => Promise<void> | void) => Promise<void>} request
 */

/**
 * @typedef {object} ShareTabsOptions
 * @property {string} [name] tabs share a connection when their clients have the same hub
 *   URL and name (default "")
 * @property {LockManager} [locks] default navigator.locks
 * @property {any} [BroadcastChannel] default globalThis.BroadcastChannel
 */

/**
 * Which connections (one per tab's client) want which channels: the leader subscribes
 * to a channel while at least one wants it. Pure.
 */
export class ChannelCounts {
  constructor() {
    /** @type {Map<string, Set<string>>} */
    this._byChannel = new Map();
    /** @type {Map<string, Set<string>>} */
    this._byConn = new Map();
  }

  /**
   * A connection wants a channel; true when it is the first to.
   * @param {string} channel
   * @param {string} conn
   * @returns {boolean}
   */
  add(channel, conn) {
    let conns = this._byChannel.get(channel);
    const first = conns === undefined;
    if (conns === undefined) this._byChannel.set(channel, (conns = new Set()));
    conns.add(conn);
    let channels = this._byConn.get(conn);
    if (channels === undefined) this._byConn.set(conn, (channels = new Set()));
    channels.add(channel);
    return first;
  }

  /**
   * A connection no longer wants a channel; true when no connection wants it now.
   * @param {string} channel
   * @param {string} conn
   * @returns {boolean}
   */
  remove(channel, conn) {
    const conns = this._byChannel.get(channel);
    if (conns === undefined || !conns.delete(conn)) return false;
    const channels = this._byConn.get(conn);
    channels?.delete(channel);
    if (channels !== undefined && channels.size === 0) this._byConn.delete(conn);
    if (conns.size > 0) return false;
    this._byChannel.delete(channel);
    return true;
  }

  /**
   * A connection went: the channels no connection wants now.
   * @param {string} conn
   * @returns {string[]}
   */
  removeConn(conn) {
    const unwanted = [];
    for (const channel of [...(this._byConn.get(conn) ?? [])]) {
      if (this.remove(channel, conn)) unwanted.push(channel);
    }
    return unwanted;
  }

  /**
   * A channel is gone for everyone (the hub unsubscribed it): who wanted it.
   * @param {string} channel
   * @returns {string[]}
   */
  removeChannel(channel) {
    const conns = [...(this._byChannel.get(channel) ?? [])];
    for (const conn of conns) this.remove(channel, conn);
    return conns;
  }

  /** @param {string} channel @param {string} conn */
  has(channel, conn) {
    return this._byChannel.get(channel)?.has(conn) ?? false;
  }

  /** @param {string} channel @returns {string[]} the connections that want it */
  conns(channel) {
    return [...(this._byChannel.get(channel) ?? [])];
  }

  /** @returns {string[]} the channels some connection wants */
  channels() {
    return [...this._byChannel.keys()];
  }
}

/** A random id for a tab or a leader (unique among the origin's tabs). */
function randomId() {
  const c = /** @type {any} */ (globalThis).crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.floor(Math.random() * 2 ** 48).toString(36)}`;
}

/** Whether tabs can share a connection here (Web Locks and BroadcastChannel). @param {ShareTabsOptions} o */
export function canShareTabs(o) {
  const locks = o.locks ?? /** @type {any} */ (globalThis).navigator?.locks;
  const BC = o.BroadcastChannel ?? /** @type {any} */ (globalThis).BroadcastChannel;
  return Boolean(locks && typeof locks.request === "function" && typeof BC === "function");
}

/**
 * The messages between tabs, on one BroadcastChannel:
 *   {t: "hello"}                                 a tab looks for the leader
 *   {t: "leader", leader}                        the leader says who it is
 *   {t: "up", leader, tab, conn, frame}          a tab's client sends lines to the leader
 *   {t: "bye", leader, conn}                     a tab's client closed its connection
 *   {t: "down", conns, frame}                    the leader sends lines to some clients
 *   {t: "close", conn, code, reason, reconnect}  the leader ends a client's connection
 * @typedef {Record<string, any>} TabMessage
 */

/**
 * A tab's part in sharing: its lock (so that the leader knows when it goes), the
 * election, the BroadcastChannel, and, in the leader, the host of the real connection.
 */
export class TabGroup {
  /**
   * @param {string} name the group's name (the hub URL and the option's name)
   * @param {ShareTabsOptions} options
   * @param {Client} client this tab's client (events of the real connection go to it)
   * @param {() => Client} makeClient makes the real connection's client (in the leader)
   */
  constructor(name, options, client, makeClient) {
    this.name = name;
    this.tabId = randomId();
    /** @type {LockManager} */
    this._locks = options.locks ?? /** @type {any} */ (globalThis).navigator.locks;
    this._BC = options.BroadcastChannel ?? /** @type {any} */ (globalThis).BroadcastChannel;
    this._client = client;
    this._makeClient = makeClient;
    /** @type {any} */
    this._bus = null;
    this._started = false;
    this._ready = false;
    /** @type {AbortController | null} */
    this._abort = null;
    /** @type {(() => void) | null} */
    this._releaseTab = null;
    /** @type {(() => void) | null} */
    this._releaseLeader = null;
    /** @type {TabHost | null} */
    this.host = null;
    /** The leader last heard of. @type {string | null} */
    this.leaderId = null;
    /** @type {Set<TabTransport>} */
    this._transports = new Set();
    this._connSeq = 0;
  }

  /** Whether this tab holds the connection. */
  get leader() {
    return this.host !== null;
  }

  /** Joins the group: takes this tab's lock, listens, and waits for the leader's lock. */
  start() {
    if (this._started) return;
    this._started = true;
    const abort = (this._abort = new AbortController());
    const signal = abort.signal;
    const hold = (/** @type {(release: () => void) => void} */ keep) => () =>
      new Promise((resolve) => keep(() => resolve(undefined)));
    this._locks
      .request(`${this.name}:tab:${this.tabId}`, { signal }, hold((release) => {
        if (signal.aborted) return release();
        this._releaseTab = release;
        this._open();
        this._locks
          .request(`${this.name}:leader`, { signal }, hold((releaseLeader) => {
            if (signal.aborted) return releaseLeader();
            this._releaseLeader = releaseLeader;
            this._lead();
          }))
          .catch(() => {}); // aborted by stop()
      }))
      .catch(() => {});
  }

  _open() {
    const bus = new this._BC(`backchannel:${this.name}`);
    bus.onmessage = (/** @type {{data: TabMessage}} */ event) => this._receive(event.data);
    this._bus = bus;
    this._ready = true;
    if (this.leaderId === null && this._transports.size > 0) this.post({ t: "hello" });
  }

  /** This tab got the leader's lock: it runs the connection for the group. */
  _lead() {
    this.host = new TabHost(this, this._makeClient());
    this.host.start();
  }

  /** Leaves the group: the leader hands over (its lock passes to another tab). */
  stop() {
    if (!this._started) return;
    this._started = false;
    this._abort?.abort();
    this._abort = null;
    for (const t of [...this._transports]) t.close();
    if (this.host !== null) {
      // The other tabs hear their connection end (then the next leader's name).
      this.host.stop();
      this.host = null;
    }
    this._ready = false;
    this.leaderId = null;
    try {
      this._bus?.close();
    } catch {
      // closed already
    }
    this._bus = null;
    this._releaseLeader?.();
    this._releaseLeader = null;
    this._releaseTab?.();
    this._releaseTab = null;
  }

  /**
   * Sends a message to every tab, this one included (a BroadcastChannel does not hear
   * itself).
   * @param {TabMessage} msg
   */
  post(msg) {
    if (!this._ready) return;
    try {
      this._bus.postMessage(msg);
    } catch (err) {
      this._client._emitError(err, "tabs");
    }
    queueMicrotask(() => this._receive(msg));
  }

  /** @param {TabMessage} msg */
  _receive(msg) {
    if (!this._ready || !isObject(msg)) return;
    const host = this.host;
    switch (msg.t) {
      case "hello":
        if (host !== null) this.post({ t: "leader", leader: host.id });
        break;
      case "leader":
        if (msg.leader === this.leaderId) break;
        this.leaderId = msg.leader;
        for (const t of [...this._transports]) t._leader(msg.leader);
        break;
      case "up":
        if (host !== null && msg.leader === host.id) host.receive(msg.tab, msg.conn, msg.frame);
        break;
      case "bye":
        if (host !== null && msg.leader === host.id) host.drop(msg.conn);
        break;
      case "down":
        for (const t of this._transports) if (msg.conns.includes(t.conn)) t._down(msg.frame);
        break;
      case "close":
        for (const t of [...this._transports]) {
          if (t.conn === msg.conn) t._closed(msg.code, msg.reason, msg.reconnect);
        }
        break;
      default:
    }
  }

  /** @param {TransportHandlers} handlers */
  transport(handlers) {
    return new TabTransport(this, `${this.tabId}:${++this._connSeq}`, handlers);
  }

  /** @param {TabTransport} t */
  _attach(t) {
    this._transports.add(t);
    if (this.leaderId !== null) t._leader(this.leaderId);
    else if (this._ready) this.post({ t: "hello" });
  }

  /** @param {TabTransport} t */
  _detach(t) {
    this._transports.delete(t);
  }

  /**
   * Calls fn once the tab `tab` is gone (its lock released).
   * @param {string} tab
   * @param {AbortSignal} signal
   * @param {() => void} fn
   */
  watchTab(tab, signal, fn) {
    this._locks.request(`${this.name}:tab:${tab}`, { signal }, () => fn()).catch(() => {});
  }
}

/** A tab's client connection to the leader: a transport like WebSocket's, for the Client. */
export class TabTransport {
  /**
   * @param {TabGroup} group
   * @param {string} conn
   * @param {TransportHandlers} handlers
   */
  constructor(group, conn, handlers) {
    this.name = TAB_TRANSPORT;
    this.conn = conn;
    this._group = group;
    this._handlers = handlers;
    /** @type {string | null} */
    this._leaderId = null;
    /** @type {string[]} */
    this._queue = [];
    this._done = false;
  }

  /** @param {string} firstFrame */
  open(firstFrame) {
    this._queue.push(firstFrame);
    this._group._attach(this);
  }

  /** @param {string} frame */
  send(frame) {
    if (this._done) return;
    if (this._leaderId === null) this._queue.push(frame);
    else this._up(frame);
  }

  /** @param {string} frame */
  _up(frame) {
    this._group.post({ t: "up", leader: this._leaderId, tab: this._group.tabId, conn: this.conn, frame });
  }

  /** A leader is known: the first one binds, another means the old one went. @param {string} id */
  _leader(id) {
    if (this._done) return;
    if (this._leaderId === null) {
      this._leaderId = id;
      const queued = this._queue;
      this._queue = [];
      for (const frame of queued) this._up(frame);
    } else if (this._leaderId !== id) {
      this._closed(DisconnectCode.CONNECTION_LOST, "the leader tab changed", true);
    }
  }

  /** @param {string} frame */
  _down(frame) {
    if (this._done) return;
    this._handlers.onActivity();
    this._handlers.onFrame(frame);
  }

  /** @param {number} code @param {string} reason @param {boolean} reconnect */
  _closed(code, reason, reconnect) {
    if (this._done) return;
    this._done = true;
    this._group._detach(this);
    this._handlers.onClose({ code, reason, reconnect });
  }

  close() {
    if (this._done) return;
    this._done = true;
    this._group._detach(this);
    if (this._leaderId !== null) this._group.post({ t: "bye", leader: this._leaderId, conn: this.conn });
  }
}

/**
 * The leader's side: the real connection, and the hub's protocol answered to the tabs'
 * clients on top of it. A channel is subscribed once, while a client wants it; its
 * publications, joins and leaves go to the clients that want it.
 */
export class TabHost {
  /**
   * @param {TabGroup} group
   * @param {Client} real
   */
  constructor(group, real) {
    this.id = randomId();
    this._group = group;
    this.real = real;
    /** The tab of each connection. @type {Map<string, string>} */
    this._conns = new Map();
    /** Connections whose connect waits for the real one. @type {Map<string, number>} */
    this._pending = new Map();
    this._counts = new ChannelCounts();
    /** @type {Map<string, Subscription>} */
    this._subs = new Map();
    /**
     * Each channel's position when it was subscribed, before any publication after it
     * went to the clients.
     * @type {Map<string, {epoch: string | null, offset: number | null}>}
     */
    this._subscribedAt = new Map();
    /** Tabs watched (their lock), so that a closed tab's channels are left. @type {Set<string>} */
    this._watched = new Set();
    this._abort = new AbortController();
    /** @type {{code: number, reason: string, reconnect: boolean} | null} */
    this._lastDisconnect = null;
  }

  start() {
    const real = this.real;
    const app = this._group._client;
    real.on("state", (/** @type {string} */ state, /** @type {string} */ previous) => {
      if (state === "connected") this._answerPending();
      else if (previous === "connected" || state === "closed") this._closeAll();
    });
    real.on("disconnect", (/** @type {any} */ info) => {
      this._lastDisconnect = info;
    });
    // The real connection's token and errors are the application's to hear, in the
    // leader tab (the other tabs have no token to refresh).
    real.on("subscription", (/** @type {Subscription} */ sub) => this._onServerSubscription(sub));
    real.on("token", (/** @type {any} */ info) => app._emit("token", info));
    real.on("error", (/** @type {any} */ err) => app._emit("error", err));
    this._group.post({ t: "leader", leader: this.id });
    real.connect().catch(() => {});
  }

  stop() {
    this._abort.abort();
    this._lastDisconnect = { code: DisconnectCode.CONNECTION_LOST, reason: "the leader tab left", reconnect: true };
    this._closeAll();
    this.real.close();
  }

  /**
   * Lines from a tab's client.
   * @param {string} tab
   * @param {string} conn
   * @param {string} frame
   */
  receive(tab, conn, frame) {
    if (!this._conns.has(conn)) {
      this._conns.set(conn, tab);
      if (tab !== this._group.tabId && !this._watched.has(tab)) {
        this._watched.add(tab);
        this._group.watchTab(tab, this._abort.signal, () => this._tabGone(tab));
      }
    }
    for (const line of String(frame).split("\n")) {
      if (!line.trim()) continue;
      let cmd;
      try {
        cmd = JSON.parse(line);
      } catch {
        continue; // our own clients write JSON
      }
      if (isObject(cmd) && Number.isSafeInteger(cmd.id)) this._command(conn, cmd.id, cmd.method, cmd.params ?? {});
    }
  }

  /** @param {string} tab */
  _tabGone(tab) {
    this._watched.delete(tab);
    for (const [conn, t] of [...this._conns]) if (t === tab) this.drop(conn);
  }

  /** A client's connection ended: its channels are left unless another wants them. @param {string} conn */
  drop(conn) {
    if (!this._conns.delete(conn)) return;
    this._pending.delete(conn);
    for (const channel of this._counts.removeConn(conn)) this._leave(channel);
  }

  /** @param {string} channel */
  _leave(channel) {
    const sub = this._subs.get(channel);
    this._subs.delete(channel);
    this._subscribedAt.delete(channel);
    sub?.unsubscribe();
  }

  /**
   * @param {string} conn
   * @param {number} id
   * @param {string} method
   * @param {Record<string, any>} params
   */
  _command(conn, id, method, params) {
    const real = this.real;
    switch (method) {
      case "connect":
        this._pending.set(conn, id);
        if (real.state === "connected") this._answerPending();
        else if (real.state === "closed") real.connect().catch(() => {});
        return;
      case "ping":
      case "refresh": // the leader's own connection refreshes its token
        this._reply(conn, id, {});
        return;
      case "subscribe":
        void this._subscribe(conn, id, params);
        return;
      case "unsubscribe":
        if (this._counts.remove(params.channel, conn)) this._leave(params.channel);
        this._reply(conn, id, {});
        return;
      default: {
        const sub = typeof params.channel === "string" ? this._subs.get(params.channel) : undefined;
        real._call(method, params, sub ? { sub } : {}).then(
          (result) => this._reply(conn, id, result),
          (err) => this._replyError(conn, id, err),
        );
      }
    }
  }

  _answerPending() {
    const real = this.real;
    const pending = [...this._pending];
    this._pending.clear();
    /** @type {Record<string, any>} */
    const result = {};
    if (real.clientId !== null) result.client = real.clientId;
    if (real.user !== null) result.user = real.user;
    for (const [conn, id] of pending) {
      this._reply(conn, id, result);
      for (const sub of this._subs.values()) {
        if (sub.server && sub.state === "subscribed") this._announce(conn, sub.channel, sub);
      }
    }
  }

  /** The real connection ended: so do the clients' (they resubscribe from their positions). */
  _closeAll() {
    const info = this._lastDisconnect ?? { code: DisconnectCode.CONNECTION_LOST, reason: "connection lost", reconnect: true };
    this._lastDisconnect = null;
    const conns = [...this._conns.keys()];
    this._conns.clear();
    this._pending.clear();
    for (const channel of this._counts.channels()) this._counts.removeChannel(channel);
    for (const channel of [...this._subs.keys()]) this._leave(channel);
    for (const conn of conns) {
      this._group.post({ t: "close", conn, code: info.code, reason: info.reason, reconnect: info.reconnect });
    }
  }

  /**
   * @param {string} conn
   * @param {number} id
   * @param {Record<string, any>} params
   */
  async _subscribe(conn, id, params) {
    const channel = params.channel;
    this._counts.add(channel, conn);
    let sub = this._subs.get(channel);
    /** @type {SubHolder} */
    const holder = { sub: null, refused: null, announce: false };
    if (sub === undefined) {
      const options = this._callbacks(channel, holder);
      if (typeof params.token === "string") options.token = params.token;
      sub = holder.sub = this.real.subscribe(channel, options);
      this._subs.set(channel, sub);
    }
    const mine = /** @type {Subscription} */ (sub);
    const refusal = () => holder.refused;
    // Where this client's publications start: the position now if subscribed, else the
    // one the subscribe brings (publications sent to it from then on come after).
    const now = mine.state === "subscribed" ? { epoch: mine.epoch, offset: mine.offset } : null;
    try {
      await mine.ready();
    } catch (err) {
      this._replyError(conn, id, refusal() ?? err);
      return;
    }
    if (!this._counts.has(channel, conn)) return; // left meanwhile
    if (params.recover !== true) {
      const at = now ?? this._subscribedAt.get(channel);
      /** @type {Record<string, any>} */
      const result = {};
      if (at && at.epoch !== null && at.offset !== null) Object.assign(result, { epoch: at.epoch, offset: at.offset });
      this._reply(conn, id, result);
      return;
    }
    // The tab's client recovers from its own position: read it from history, as the hub
    // would (publications that come meanwhile wait in the client, which skips repeats).
    try {
      this._reply(conn, id, await this._recover(mine, params.epoch, params.offset));
    } catch (err) {
      this._replyError(conn, id, err);
    }
  }

  /**
   * The real subscription's callbacks: what it gets goes to the clients that want it.
   * @param {string} channel
   * @param {SubHolder} holder
   * @returns {Record<string, any>}
   */
  _callbacks(channel, holder) {
    return {
      onPublication: (/** @type {any} */ pub) => this._fan(channel, { push: "publication", ...pub }),
      onJoin: (/** @type {any} */ ctx) => this._fan(channel, { push: "join", channel, info: ctx.info }),
      onLeave: (/** @type {any} */ ctx) => this._fan(channel, { push: "leave", channel, info: ctx.info }),
      onSubscribed: (/** @type {any} */ ctx) => {
        this._subscribedAt.set(channel, { epoch: ctx.epoch, offset: ctx.offset });
        if (holder.announce) {
          // The server subscribed the connection: every client is, from this position.
          holder.announce = false;
          for (const conn of this._connected()) this._announce(conn, channel, ctx);
        }
      },
      onError: (/** @type {any} */ err) => {
        holder.refused = err;
      },
      onUnsubscribe: (/** @type {{code: number, reason: string}} */ ctx) => {
        if (ctx.code === 0 || this._subs.get(channel) !== holder.sub) return; // we left it
        this._subs.delete(channel);
        this._subscribedAt.delete(channel);
        const conns = this._counts.removeChannel(channel);
        this._send(conns, { push: "unsubscribe", channel, code: ctx.code, reason: ctx.reason });
      },
    };
  }

  /** A subscription the server made (a `subscribe` push): the clients get it too. @param {Subscription} sub */
  _onServerSubscription(sub) {
    if (this._subs.has(sub.channel)) return;
    /** @type {SubHolder} */
    const holder = { sub, refused: null, announce: true };
    sub.setCallbacks(this._callbacks(sub.channel, holder));
    this._subs.set(sub.channel, sub);
  }

  /**
   * Tells a client the server subscribed it.
   * @param {string} conn
   * @param {string} channel
   * @param {{epoch: string | null, offset: number | null}} at
   */
  _announce(conn, channel, at) {
    this._counts.add(channel, conn);
    /** @type {Record<string, any>} */
    const push = { push: "subscribe", channel };
    if (at.epoch !== null && at.offset !== null) Object.assign(push, { epoch: at.epoch, offset: at.offset });
    this._send([conn], push);
  }

  /** The clients whose connect was answered. */
  _connected() {
    return [...this._conns.keys()].filter((conn) => !this._pending.has(conn));
  }

  /**
   * @param {Subscription} sub
   * @param {string} epoch
   * @param {number} offset
   * @returns {Promise<Record<string, any>>}
   */
  async _recover(sub, epoch, offset) {
    const publications = [];
    let at = offset;
    const maxReads = this.real._gaps.maxReads;
    for (let round = 0; round < maxReads; round++) {
      const result = await this.real._call("history", { channel: sub.channel, epoch, offset: at }, { sub });
      if (result.recovered === false) return { recovered: false, epoch: result.epoch, offset: result.offset };
      const pubs = Array.isArray(result.publications) ? result.publications.filter(isObject) : [];
      publications.push(...pubs);
      if (pubs.length > 0) at = pubs[pubs.length - 1].offset;
      if (pubs.length === 0 || at >= result.offset) break;
    }
    // The position is the last publication read: newer ones past a short read show as a
    // gap, which the client reads from history itself.
    return { recovered: true, publications, epoch, offset: at };
  }

  /** @param {string} channel @param {Record<string, any>} push */
  _fan(channel, push) {
    this._send(this._counts.conns(channel), push);
  }

  /** @param {string[]} conns @param {Record<string, any>} msg */
  _send(conns, msg) {
    if (conns.length > 0) this._group.post({ t: "down", conns, frame: JSON.stringify(msg) });
  }

  /** @param {string} conn @param {number} id @param {Record<string, any>} result */
  _reply(conn, id, result) {
    if (this._conns.has(conn)) this._send([conn], { id, result: isObject(result) ? result : {} });
  }

  /** @param {string} conn @param {number} id @param {any} err */
  _replyError(conn, id, err) {
    const code = Number.isSafeInteger(err?.code) ? err.code : ErrorCode.INTERNAL;
    const error = { code, message: errorMessage(err), temporary: err?.temporary === true };
    if (this._conns.has(conn)) this._send([conn], { id, error });
  }
}
