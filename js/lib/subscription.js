// A subscription to one channel: subscribing (again, with recovery, after each
// reconnect), publications in order and never twice, and gaps filled from history.

import { BackchannelError, ErrorCode } from "./codes.js";
import { errorMessage, isObject, noop } from "./wire.js";

/** @typedef {import("./wire.js").Publication} Publication */
/** @typedef {import("./wire.js").Push} Push */
/** @typedef {import("./wire.js").SubscriptionState} SubscriptionState */
/** @typedef {import("./wire.js").ClientInfo} ClientInfo */
/** @typedef {import("./client.js").Client} Client */
/** @typedef {import("./client.js").SubscriptionOptions} SubscriptionOptions */

/** Publications held back behind a gap at most, by default; past it the gap is given up. */
export const MAX_HELD = 1000;
/** History reads to fill one gap at most, by default (each brings what the hub's limit allows). */
export const MAX_GAP_READS = 10;

/**
 * The order of a channel's publications: delivers each once, in offset order, and says
 * which range is missing when offsets skip (the hub dropped some for a slow reader, or
 * said so with a `dropped` push). Pure: the subscription reads the range from history
 * and hands it back with filled().
 */
export class Sequencer {
  /**
   * @param {string | null} [epoch] the last delivered
   * @param {number | null} [offset]
   * @param {number} [maxHeld] publications held behind a gap at most
   */
  constructor(epoch = null, offset = null, maxHeld = MAX_HELD) {
    this.maxHeld = maxHeld;
    /** @type {string | null} */
    this.epoch = epoch;
    /** @type {number | null} */
    this.offset = offset;
    /** Missing up to this offset (inclusive), or null when nothing is. @type {number | null} */
    this.missingTo = null;
    /**
     * Where a gap was given up because too much was held (push), until taken.
     * @type {{epoch: string | null, offset: number | null} | null}
     */
    this.lostAt = null;
    /** Publications after the gap, by offset. @type {Map<number, Publication>} */
    this._held = new Map();
  }

  /**
   * The stream's position (after a subscribe): held publications and gaps are forgotten.
   * @param {string | null} epoch
   * @param {number | null} offset
   */
  reset(epoch, offset) {
    this.epoch = epoch;
    this.offset = offset;
    this.missingTo = null;
    this._held.clear();
  }

  /**
   * The range to read from history, or null: publications after `offset` of `epoch`, up
   * to `to`.
   * @returns {{epoch: string, offset: number, to: number} | null}
   */
  get gap() {
    if (this.missingTo === null || this.epoch === null || this.offset === null) return null;
    return { epoch: this.epoch, offset: this.offset, to: this.missingTo };
  }

  /**
   * A publication arrived: returns those to deliver now, in order.
   * @param {Publication} pub
   * @returns {Publication[]}
   */
  push(pub) {
    const offset = pub.offset;
    if (!(Number.isSafeInteger(offset) && /** @type {number} */ (offset) > 0 && typeof pub.epoch === "string")) {
      return [pub]; // a channel without history: nothing to order by
    }
    const o = /** @type {number} */ (offset);
    if (this.epoch === null || this.offset === null || pub.epoch !== this.epoch) {
      // A first position, or a new stream (its history was lost): start from here.
      this.reset(pub.epoch, o);
      return [pub];
    }
    if (o <= this.offset) return []; // seen already
    if (o === this.offset + 1) {
      this.offset = o;
      return [pub, ...this._drain()];
    }
    if (this._held.size >= this.maxHeld) {
      // Too far behind to hold on: give up the gap, deliver what is held, in order.
      this.lostAt = { epoch: this.epoch, offset: this.offset };
      return [...this._giveUp(), ...this.push(pub)];
    }
    this._held.set(o, pub);
    // The first hole is the gap; a later one shows once it is filled (_drain).
    if (this.missingTo === null) this.missingTo = o - 1;
    return [];
  }

  /**
   * The hub dropped publications up to `offset` (a `dropped` push).
   * @param {string} epoch
   * @param {number} offset
   */
  dropped(epoch, offset) {
    if (epoch !== this.epoch || this.offset === null || offset <= this.offset) return;
    this.missingTo = Math.max(this.missingTo ?? 0, offset);
  }

  /**
   * Publications read from history for the gap. With `complete`, history has nothing
   * more to give for it (it no longer keeps them, or the epoch changed): what is still
   * missing is given up. Returns those to deliver now, in order, and whether
   * publications were lost for good.
   * @param {Publication[]} pubs
   * @param {boolean} complete
   * @returns {{deliver: Publication[], lost: boolean}}
   */
  filled(pubs, complete) {
    /** @type {Publication[]} */
    const deliver = [];
    const to = this.missingTo;
    for (const pub of pubs) {
      if (pub.epoch !== this.epoch || !Number.isSafeInteger(pub.offset) || this.offset === null) continue;
      const o = /** @type {number} */ (pub.offset);
      if (o <= this.offset) continue;
      if (o === this.offset + 1) {
        this.offset = o;
        this._held.delete(o);
        deliver.push(pub);
      } else if (!this._held.has(o)) {
        this._held.set(o, pub);
      }
    }
    if (to !== null && this.offset !== null && this.offset >= to) this.missingTo = null;
    deliver.push(...this._drain());
    let lost = false;
    if (complete && this.missingTo !== null) {
      lost = true;
      deliver.push(...this._giveUp());
    }
    return { deliver, lost };
  }

  /** @returns {Publication[]} */
  _drain() {
    /** @type {Publication[]} */
    const out = [];
    while (this.offset !== null && this._held.has(this.offset + 1)) {
      this.offset++;
      out.push(/** @type {Publication} */ (this._held.get(this.offset)));
      this._held.delete(this.offset);
    }
    if (this.missingTo !== null && this.offset !== null && this.offset >= this.missingTo) this.missingTo = null;
    if (this.missingTo === null && this._held.size > 0) {
      // Held ones after a further hole: that hole is the next gap.
      const next = Math.min(...this._held.keys());
      this.missingTo = next - 1;
    }
    return out;
  }

  /** Skips the missing range: held publications, in order; the position moves past them. */
  _giveUp() {
    const offsets = [...this._held.keys()].sort((a, b) => a - b);
    const out = offsets.map((o) => /** @type {Publication} */ (this._held.get(o)));
    this._held.clear();
    const last = offsets.length > 0 ? offsets[offsets.length - 1] : null;
    const top = Math.max(last ?? 0, this.missingTo ?? 0, this.offset ?? 0);
    this.offset = top;
    this.missingTo = null;
    return out;
  }
}

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
    /** Whether the server subscribed this connection (a `subscribe` push). */
    this.server = false;
    /** Publications in order, gaps found: the position is its. */
    this._order = new Sequencer(options.since?.epoch ?? null, options.since?.offset ?? null, client._gaps.maxHeld);
    this._filling = false;
    this._options = { ...options };
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

  /** The epoch of the last publication delivered (or of the subscribe result). @type {string | null} */
  get epoch() {
    return this._order.epoch;
  }

  /** The offset of the last publication delivered (or of the subscribe result). @type {number | null} */
  get offset() {
    return this._order.offset;
  }

  /**
   * Sets callbacks (onPublication, onJoin, ...) after the fact: for a subscription the
   * server made, which the application first sees in the client's `subscription` event.
   * @param {SubscriptionOptions} callbacks
   * @returns {this}
   */
  setCallbacks(callbacks) {
    Object.assign(this._options, callbacks);
    return this;
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
      this._order.reset(result.epoch, result.offset);
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
    client._sendKept(this.channel);
    client._drainWaiting();
  }

  /**
   * The server subscribed this connection (a `subscribe` push): subscribed from its
   * position, as if a subscribe had been answered.
   * @param {Push} push
   */
  _onServerSubscribe(push) {
    this.server = true;
    this._seq++;
    this._onSubscribed(
      { epoch: push.epoch, offset: push.offset },
      false,
    );
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
    this._emitAll(this._order.push(pub));
    const lostAt = this._order.lostAt;
    if (lostAt !== null) {
      this._order.lostAt = null;
      this._lost(lostAt);
    }
    this._fillGap();
  }

  /** @param {Publication[]} pubs */
  _emitAll(pubs) {
    for (const p of pubs) {
      if (this.state !== "subscribed") return;
      this.client._callback(this._options.onPublication, p);
    }
  }

  /** A gap in offsets: read it from history, deliver it before anything newer. */
  _fillGap() {
    if (this._filling || this.state !== "subscribed" || this._order.gap === null) return;
    this._filling = true;
    const seq = this._seq;
    this._readGap(seq).finally(() => {
      if (seq === this._seq) this._filling = false;
    });
  }

  /** @param {number} seq */
  async _readGap(seq) {
    for (let round = 0; round < this.client._gaps.maxReads; round++) {
      const gap = this._order.gap;
      if (gap === null) return;
      let result;
      try {
        result = await this.client._call("history", { channel: this.channel, epoch: gap.epoch, offset: gap.offset }, { sub: this });
      } catch (err) {
        // A lost connection: the resubscribe recovers from the same position.
        if (seq !== this._seq) return;
        this._error(err instanceof BackchannelError ? err : new BackchannelError(ErrorCode.INTERNAL, errorMessage(err)));
        break;
      }
      if (seq !== this._seq) return;
      const pubs = Array.isArray(result.publications) ? result.publications.filter(isObject) : [];
      const { deliver, lost } = this._order.filled(pubs, result.recovered === false || pubs.length === 0);
      this._emitAll(deliver);
      if (lost) this._lost(gap);
    }
    if (seq !== this._seq || this._order.gap === null) return;
    const gap = this._order.gap;
    this._emitAll(this._order.filled([], true).deliver);
    this._lost(gap);
  }

  /**
   * Publications were missed and cannot be read back.
   * @param {{epoch: string | null, offset: number | null}} at the last position delivered before them
   */
  _lost(at) {
    const ctx = { channel: this.channel, epoch: at.epoch, offset: at.offset, gap: true };
    if (typeof this._options.onRecoveryFailed === "function") this.client._callback(this._options.onRecoveryFailed, ctx);
    else this._error(new BackchannelError(ErrorCode.UNRECOVERABLE_POSITION, "missed publications could not be read from history", false, "history"));
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
      case "dropped":
        if (this.state !== "subscribed") break;
        if (typeof push.epoch === "string" && Number.isSafeInteger(push.offset)) {
          this._order.dropped(push.epoch, push.offset);
          this._fillGap();
        } else {
          // A channel without history: nothing to read back.
          this._lost({ epoch: this.epoch, offset: this.offset });
        }
        break;
      default:
    }
  }

  _onConnectionLost() {
    if (this.state === "unsubscribed") return;
    this.state = "subscribing";
    this._seq++;
    this._buffer = [];
    this._filling = false;
    // Held publications and gaps are forgotten: recovery reads all after the last delivered.
    this._order.reset(this._order.epoch, this._order.offset);
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
    client._refuseKept(this.channel, err);
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
    if (this.client.outbox !== null) return this.client._publishKept(this, params.data, options.idempotencyKey);
    return this.client._call("publish", params, { sub: this });
  }

  /**
   * Who is subscribed: `{clients}` with every client or, in count-only channels,
   * `{count, users}`. The hub answers a page at a time (docs/protocol.md); this asks for
   * the next one (`cursor`) until no `next_cursor` comes back.
   * @returns {Promise<{clients?: Record<string, ClientInfo>, count?: number, users?: number}>}
   */
  async presence() {
    if (this.state === "unsubscribed") return this._closedError("presence");
    /** @type {Record<string, ClientInfo>} */
    const clients = {};
    /** @type {string | undefined} */
    let cursor;
    for (;;) {
      /** @type {Record<string, any>} */
      const params = { channel: this.channel };
      if (cursor !== undefined) params.cursor = cursor;
      const page = await this.client._call("presence", params, { sub: this });
      if (page === null || typeof page.clients !== "object" || page.clients === null) return page; // count-only
      // Defined, not assigned: a client id is data, even one named like "__proto__".
      for (const [id, info] of Object.entries(page.clients)) {
        Object.defineProperty(clients, id, { value: info, enumerable: true, writable: true, configurable: true });
      }
      const next = page.next_cursor;
      // A cursor that does not move on would loop forever: stop at it.
      if (typeof next !== "string" || next === cursor) return { clients };
      cursor = next;
    }
  }

  /**
   * How many connections and distinct users are subscribed, counted by the hub (no list
   * crosses the network, however many there are).
   * @returns {Promise<{count: number, users: number}>}
   */
  async presenceStats() {
    if (this.state === "unsubscribed") return this._closedError("presenceStats");
    const result = await this.client._call("presence", { channel: this.channel, count_only: true }, { sub: this });
    if (result !== null && typeof result.clients === "object" && result.clients !== null) {
      // A hub that ignores count_only (older than it) sends the list: count it here.
      const infos = /** @type {ClientInfo[]} */ (Object.values(result.clients));
      return { count: infos.length, users: new Set(infos.map((info) => info.user)).size };
    }
    const count = Number.isInteger(result?.count) ? result.count : 0;
    const users = Number.isInteger(result?.users) ? result.users : 0;
    return { count, users };
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
