// The outbox: publishes that have not been acknowledged yet, kept in order, bounded, each
// with an idempotency key so that sending one again after a reconnect counts once (the
// hub remembers keys for its idempotency window, 120 s by default). Pure: no I/O but an
// optional Storage (localStorage or anything with getItem/setItem/removeItem).

/** Publishes kept at most, by default. */
export const OUTBOX_MAX = 100;

/**
 * What happens to a publish when the outbox is full: "reject-new" refuses the new one
 * (nothing already accepted is lost), "drop-oldest" drops the oldest waiting one.
 * @typedef {"reject-new" | "drop-oldest"} OutboxPolicy
 */

/**
 * One publish waiting for its acknowledgement.
 * @typedef {object} OutboxEntry
 * @property {string} key its idempotency key
 * @property {string} channel
 * @property {*} data
 * @property {number} created when it was published (the page's Date.now())
 */

/**
 * @typedef {object} OutboxOptions
 * @property {number} [max] publishes kept at most (default OUTBOX_MAX)
 * @property {OutboxPolicy} [policy] default "reject-new"
 * @property {{getItem(k: string): string | null, setItem(k: string, v: string): void, removeItem(k: string): void} | null} [storage]
 *   where the outbox survives a page reload (opt-in; localStorage in a browser)
 * @property {string} [storageKey] the storage item's name
 */

/** A random idempotency key: crypto.randomUUID where there is one. */
export function newKey() {
  const c = /** @type {any} */ (globalThis).crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  // Insecure contexts (plain http on another host) have no randomUUID: a key needs
  // only to be unique among this user's publishes in the hub's window.
  let key = "";
  for (let i = 0; i < 4; i++) key += Math.floor(Math.random() * 2 ** 32).toString(16).padStart(8, "0");
  return key;
}

export class Outbox {
  /** @param {OutboxOptions} [options] */
  constructor(options = {}) {
    const max = options.max ?? OUTBOX_MAX;
    if (!(Number.isSafeInteger(max) && max >= 1)) throw new TypeError("outbox.max is a positive integer");
    const policy = options.policy ?? "reject-new";
    if (policy !== "reject-new" && policy !== "drop-oldest") {
      throw new TypeError('outbox.policy is "reject-new" or "drop-oldest"');
    }
    this.max = max;
    /** @type {OutboxPolicy} */
    this.policy = policy;
    this._storage = options.storage ?? null;
    this._storageKey = options.storageKey ?? "backchannel.outbox";
    /** In publish order. @type {OutboxEntry[]} */
    this._entries = [];
    this._load();
  }

  /** How many publishes wait. */
  get size() {
    return this._entries.length;
  }

  /**
   * The waiting publishes, oldest first (a copy).
   * @param {string} [channel] only this channel's
   * @returns {OutboxEntry[]}
   */
  entries(channel) {
    return channel === undefined ? [...this._entries] : this._entries.filter((e) => e.channel === channel);
  }

  /**
   * Adds a publish. Returns whether it was accepted and which entry the policy dropped
   * to make room (drop-oldest).
   * @param {OutboxEntry} entry
   * @returns {{accepted: boolean, dropped: OutboxEntry | null}}
   */
  add(entry) {
    if (this._entries.some((e) => e.key === entry.key)) return { accepted: true, dropped: null };
    /** @type {OutboxEntry | null} */
    let dropped = null;
    if (this._entries.length >= this.max) {
      if (this.policy === "reject-new") return { accepted: false, dropped: null };
      dropped = /** @type {OutboxEntry} */ (this._entries.shift());
    }
    this._entries.push(entry);
    this._save();
    return { accepted: true, dropped };
  }

  /**
   * Removes a publish (acknowledged or refused); false when it was not there.
   * @param {string} key
   * @returns {boolean}
   */
  remove(key) {
    const i = this._entries.findIndex((e) => e.key === key);
    if (i < 0) return false;
    this._entries.splice(i, 1);
    this._save();
    return true;
  }

  /** @param {string} key */
  has(key) {
    return this._entries.some((e) => e.key === key);
  }

  _load() {
    if (!this._storage) return;
    let parsed;
    try {
      parsed = JSON.parse(this._storage.getItem(this._storageKey) ?? "[]");
    } catch {
      parsed = []; // a damaged item is dropped rather than stopping the client
    }
    if (!Array.isArray(parsed)) return;
    for (const e of parsed) {
      if (e && typeof e.key === "string" && typeof e.channel === "string" && "data" in e) {
        this._entries.push({ key: e.key, channel: e.channel, data: e.data, created: Number(e.created) || 0 });
      }
    }
    // A smaller max than last time: the newest are kept.
    if (this._entries.length > this.max) this._entries.splice(0, this._entries.length - this.max);
  }

  _save() {
    if (!this._storage) return;
    try {
      if (this._entries.length === 0) this._storage.removeItem(this._storageKey);
      else this._storage.setItem(this._storageKey, JSON.stringify(this._entries));
    } catch {
      // Storage full or refused (private mode): the outbox still works for this page.
    }
  }
}
