// Fakes for the tests: a clock with timers, a WebSocket class, an EventSource class, a
// fetch function, a storage.
// Nothing here touches the network or waits for real time.

/** Lets promise chains and queued microtasks run (no real waiting: setImmediate turns). */
export async function flush(turns = 3) {
  for (let i = 0; i < turns; i++) await new Promise((resolve) => setImmediate(resolve));
}

/** A clock whose timers run only when the test advances it. */
export class FakeClock {
  constructor(start = 1_700_000_000_000) {
    this.now = start;
    this._seq = 0;
    /** @type {Map<number, {at: number, ms: number, fn: () => void, order: number}>} */
    this._timers = new Map();
    /** Every setTimeout call: {ms, at}. */
    this.log = [];
    this.setTimeout = (fn, ms) => {
      const id = ++this._seq;
      const delay = Math.max(0, ms | 0);
      this._timers.set(id, { at: this.now + delay, ms: delay, fn, order: id });
      this.log.push({ ms: delay, at: this.now });
      return id;
    };
    this.clearTimeout = (id) => {
      this._timers.delete(id);
    };
    this.dateNow = () => this.now;
  }

  /** Timers not yet run, soonest first. */
  pending() {
    return [...this._timers.values()].sort((a, b) => a.at - b.at || a.order - b.order);
  }

  _takeDue(limit) {
    let best = null;
    let bestId = null;
    for (const [id, t] of this._timers) {
      if (t.at <= limit && (best === null || t.at < best.at || (t.at === best.at && t.order < best.order))) {
        best = t;
        bestId = id;
      }
    }
    if (best !== null) this._timers.delete(bestId);
    return best;
  }

  /** Moves time forward by ms, running each timer due on the way (in order). */
  async advance(ms) {
    await flush();
    const target = this.now + ms;
    for (;;) {
      const t = this._takeDue(target);
      if (!t) break;
      this.now = Math.max(this.now, t.at);
      t.fn();
      await flush();
    }
    this.now = target;
    await flush();
  }

  /** Runs the next timer, however far; returns how far time moved. */
  async next() {
    const t = this.pending()[0];
    if (!t) throw new Error("no timer pending");
    const from = this.now;
    await this.advance(t.at - this.now);
    return this.now - from;
  }

  /** Time passes without timers running (a throttled tab, a sleeping laptop). */
  jump(ms) {
    this.now += ms;
  }
}

/** A WebSocket class whose instances the test drives. */
export function makeWebSocket() {
  class FakeWebSocket {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSED = 3;
    /** @type {FakeWebSocket[]} */
    static instances = [];
    /** Set to make the constructor throw. */
    static throwOnCreate = null;

    constructor(url) {
      if (FakeWebSocket.throwOnCreate) throw FakeWebSocket.throwOnCreate;
      this.url = url;
      this.readyState = 0;
      /** @type {string[]} */
      this.sent = [];
      this.closedWith = null;
      this.onopen = this.onmessage = this.onerror = this.onclose = null;
      FakeWebSocket.instances.push(this);
    }

    static last() {
      return FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
    }

    send(data) {
      if (this.readyState !== 1) throw new Error("InvalidStateError: not open");
      this.sent.push(data);
    }

    close(code, reason) {
      if (this.closedWith === null) this.closedWith = { code, reason };
      this.readyState = 3;
    }

    // The test's side.
    open() {
      this.readyState = 1;
      this.onopen?.({ type: "open" });
    }

    receive(text) {
      this.onmessage?.({ type: "message", data: text });
    }

    serverClose(code = 1006, reason = "") {
      this.readyState = 3;
      this.onclose?.({ type: "close", code, reason, wasClean: code !== 1006 });
    }

    fail() {
      this.readyState = 3;
      this.onerror?.({ type: "error" });
      this.onclose?.({ type: "close", code: 1006, reason: "", wasClean: false });
    }

    /** Every command sent so far, parsed, in order. */
    commands() {
      return this.sent.flatMap((frame) => frame.split("\n").map((line) => JSON.parse(line)));
    }

    lastCommand(method) {
      const all = this.commands().filter((c) => method === undefined || c.method === method);
      return all[all.length - 1];
    }
  }
  return FakeWebSocket;
}

/** An EventSource class whose instances the test drives (a Server-Sent Events stream). */
export function makeEventSource() {
  class FakeEventSource {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSED = 2;
    /** @type {FakeEventSource[]} */
    static instances = [];
    /** Set to make the constructor throw. */
    static throwOnCreate = null;

    constructor(url) {
      if (FakeEventSource.throwOnCreate) throw FakeEventSource.throwOnCreate;
      this.url = String(url);
      this.readyState = 0;
      this.closed = false;
      this.onopen = this.onmessage = this.onerror = null;
      /** @type {Map<string, Set<Function>>} */
      this._listeners = new Map();
      FakeEventSource.instances.push(this);
    }

    static last() {
      return FakeEventSource.instances[FakeEventSource.instances.length - 1];
    }

    addEventListener(type, fn) {
      if (!this._listeners.has(type)) this._listeners.set(type, new Set());
      this._listeners.get(type).add(fn);
    }

    removeEventListener(type, fn) {
      this._listeners.get(type)?.delete(fn);
    }

    close() {
      this.closed = true;
      this.readyState = 2;
    }

    _dispatch(type, event) {
      if (this.closed) return;
      const handler = this[`on${type}`];
      if (typeof handler === "function") handler.call(this, event);
      for (const fn of [...(this._listeners.get(type) ?? [])]) fn.call(this, event);
    }

    // The test's side.

    /** The connect frame the URL carries (?frame=), parsed, command by command. */
    frame() {
      return new URL(this.url).searchParams.get("frame").split("\n").map((line) => JSON.parse(line));
    }

    /** The stream is open and brings its session event. */
    session(sid) {
      this.readyState = 1;
      this._dispatch("open", { type: "open" });
      this._dispatch("session", { type: "session", data: JSON.stringify({ sid }) });
    }

    /** A `data:` event (a wire line), with its `id:` if given. */
    receive(text, lastEventId = "") {
      this._dispatch("message", { type: "message", data: text, lastEventId });
    }

    /** The stream failed or dropped: EventSource would reconnect (CONNECTING) unless closed. */
    fail() {
      this.readyState = 0;
      this._dispatch("error", { type: "error" });
    }
  }
  return FakeEventSource;
}

/** Storage as sessionStorage has it (getItem, setItem, removeItem), in memory. */
export class FakeStorage {
  constructor() {
    /** @type {Map<string, string>} */
    this.items = new Map();
  }
  getItem(key) {
    return this.items.has(key) ? this.items.get(key) : null;
  }
  setItem(key, value) {
    this.items.set(key, String(value));
  }
  removeItem(key) {
    this.items.delete(key);
  }
}

/** A fetch function whose requests the test answers. */
export function makeFetch() {
  /** @type {any[]} */
  const requests = [];
  function fetch(url, init = {}) {
    return new Promise((resolve, reject) => {
      const req = {
        url: String(url),
        method: init.method ?? "GET",
        body: init.body,
        keepalive: init.keepalive === true,
        settled: false,
        aborted: false,
        get query() {
          return new URL(this.url).searchParams;
        },
        respond(status, body) {
          if (this.settled) throw new Error(`request already settled: ${this.method} ${this.url}`);
          this.settled = true;
          const text = typeof body === "string" ? body : JSON.stringify(body);
          resolve({ ok: status >= 200 && status < 300, status, text: async () => text });
        },
        fail(err = new TypeError("network error")) {
          if (this.settled) throw new Error("request already settled");
          this.settled = true;
          reject(err);
        },
      };
      init.signal?.addEventListener("abort", () => {
        if (req.settled) return;
        req.settled = true;
        req.aborted = true;
        reject(Object.assign(new Error("aborted"), { name: "AbortError" }));
      });
      requests.push(req);
    });
  }
  const api = {
    fetch,
    requests,
    /** Requests not answered yet, optionally of one method. */
    open(method) {
      return requests.filter((r) => !r.settled && (method === undefined || r.method === method));
    },
    /** The one pending request of this method (throws if not exactly one). */
    one(method) {
      const list = api.open(method);
      if (list.length !== 1) throw new Error(`expected one pending ${method}, found ${list.length}`);
      return list[0];
    },
  };
  return api;
}

/** Wire text for a reply. */
export function reply(id, result) {
  return JSON.stringify({ id, result });
}

/** Wire text for an error reply. */
export function errorReply(id, code, message = "error", temporary = false) {
  return JSON.stringify({ id, error: { code, message, temporary } });
}

/** Wire text for a publication push. */
export function publication(channel, data, offset, epoch) {
  const p = { push: "publication", channel, data };
  if (offset !== undefined) Object.assign(p, { offset, epoch });
  return JSON.stringify(p);
}

/** Wire text for a disconnect push. */
export function disconnectPush(code, reason, reconnect) {
  return JSON.stringify({ push: "disconnect", code, reason, reconnect });
}

/**
 * Tabs of one origin, for a shared connection: each tab gets a Web Locks manager and a
 * BroadcastChannel class; kill(tab) is the tab closing (its locks go to the next
 * waiting, its channels hear nothing more). Messages are delivered in order, a turn later.
 */
export class TabWorld {
  constructor() {
    /** @type {Set<any>} */
    this._channels = new Set();
    /** @type {Map<string, {tab: string}>} */
    this._held = new Map();
    /** @type {Map<string, Array<any>>} */
    this._queue = new Map();
    this._dead = new Set();
  }

  /** The Web Locks and BroadcastChannel of a tab. @param {string} tab */
  tab(tab) {
    const world = this;
    class FakeBroadcastChannel {
      constructor(name) {
        this.name = name;
        this.tab = tab;
        this.onmessage = null;
        this.closed = false;
        world._channels.add(this);
      }
      postMessage(msg) {
        if (this.closed) throw new Error("closed");
        for (const other of world._channels) {
          if (other === this || other.name !== this.name) continue;
          const copy = structuredClone(msg);
          setImmediate(() => {
            if (!other.closed) other.onmessage?.({ data: copy });
          });
        }
      }
      close() {
        this.closed = true;
        world._channels.delete(this);
      }
    }
    const locks = {
      request: (name, options, fn) =>
        new Promise((resolve, reject) => {
          if (world._dead.has(tab)) return;
          const req = { tab, fn, resolve, reject };
          const q = world._queue.get(name) ?? [];
          world._queue.set(name, q);
          q.push(req);
          options.signal?.addEventListener("abort", () => {
            const i = q.indexOf(req);
            if (i >= 0) {
              q.splice(i, 1);
              reject(new Error("AbortError"));
            }
          });
          queueMicrotask(() => world._grant(name));
        }),
    };
    return { locks, BroadcastChannel: FakeBroadcastChannel };
  }

  /** @param {string} name */
  _grant(name) {
    if (this._held.has(name)) return;
    const q = this._queue.get(name) ?? [];
    const req = q.shift();
    if (!req) return;
    const holder = { tab: req.tab };
    this._held.set(name, holder);
    Promise.resolve()
      .then(() => req.fn())
      .then(
        (v) => {
          if (this._held.get(name) !== holder) return;
          this._held.delete(name);
          req.resolve(v);
          this._grant(name);
        },
        (e) => {
          if (this._held.get(name) !== holder) return;
          this._held.delete(name);
          req.reject(e);
          this._grant(name);
        },
      );
  }

  /** Who holds a lock. @param {string} name */
  holder(name) {
    return this._held.get(name)?.tab ?? null;
  }

  /** The tab closes. @param {string} tab */
  kill(tab) {
    this._dead.add(tab);
    for (const ch of [...this._channels]) if (ch.tab === tab) ch.close();
    for (const q of this._queue.values()) {
      for (let i = q.length - 1; i >= 0; i--) if (q[i].tab === tab) q.splice(i, 1);
    }
    for (const [name, h] of [...this._held]) {
      if (h.tab !== tab) continue;
      this._held.delete(name);
      this._grant(name);
    }
  }
}
