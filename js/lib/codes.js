// Error and disconnect codes (docs/protocol.md, "Codes"), and the one error class.

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
  /** The outbox was full: the publish was not kept (or an older one was dropped for it). */
  OUTBOX_FULL: 7,
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

