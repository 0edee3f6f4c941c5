// Presence kept up to date: a snapshot from presence() with the join and leave pushes
// applied to it. Pure: no I/O.

/** @typedef {import("./wire.js").ClientInfo} ClientInfo */

/**
 * Applies joins and leaves to a presence snapshot (`{client id: client info}`, as
 * `presence()` gives it in `clients`). Returns a new object; the snapshot is left as it
 * is. A join of a client already there replaces its info; a leave of a client not there
 * changes nothing (a leave may overtake the snapshot it belongs after).
 * @param {Record<string, ClientInfo>} snapshot
 * @param {Array<{type: "join" | "leave", info: ClientInfo}>} events in the order received
 * @returns {Record<string, ClientInfo>}
 */
export function applyPresence(snapshot, events) {
  /** @type {Record<string, ClientInfo>} */
  const out = { ...snapshot };
  for (const event of events) {
    const id = event?.info?.client;
    if (typeof id !== "string") continue;
    if (event.type === "join") out[id] = event.info;
    else if (event.type === "leave") delete out[id];
  }
  return out;
}

/**
 * The users of a presence snapshot, each once, sorted (a user may have several
 * connections).
 * @param {Record<string, ClientInfo>} snapshot
 * @returns {string[]}
 */
export function presenceUsers(snapshot) {
  return [...new Set(Object.values(snapshot).map((c) => c.user))].sort();
}
