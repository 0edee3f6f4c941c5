// Types of the public API of backchannel.js (the browser client of backchannel's hub),
// which gathers the modules of lib/. Checked with tsc by tests/app/test_browser_client.py.

export type ClientState = "disconnected" | "connecting" | "connected" | "closed";
export type SubscriptionState = "subscribing" | "subscribed" | "unsubscribed";
/** A registered transport: "websocket", "sse" and "longpoll" are built in (registerTransport). */
export type TransportName = "websocket" | "sse" | "longpoll" | (string & {});

/** A connection, as the hub describes it. */
export interface ClientInfo {
  client: string;
  user: string;
  info?: unknown;
}

/** A publication in a channel. */
export interface Publication {
  channel: string;
  data: any;
  /** Its offset in the channel's stream (channels with history). */
  offset?: number;
  /** The stream's epoch (with offset). */
  epoch?: string;
  /** The publisher, when known. */
  info?: ClientInfo;
}

export interface DisconnectInfo {
  /** 3000-4999 from the hub; 1000 closed by the client; 1006 connection lost. */
  code: number;
  reason: string;
  reconnect: boolean;
}

export interface StreamPosition {
  epoch: string;
  offset: number;
}

export interface ClientOptions {
  /** The connection token (JWT). */
  token?: string;
  /**
   * Gets a new token: before connecting without one, when the hub says the token
   * expired (109, 3004), and before it expires (refresh at 90% of its remaining time).
   * A rejection is reported as an `error` and tried again later; an empty string
   * closes the client (unauthorized, 101).
   */
  getToken?: () => Promise<string>;
  /**
   * Transports tried in this order: when one does not get through (fails before its
   * first message, or brings none within fallbackTimeout), the next; the one that
   * works is remembered for the page and its reloads, the first tried again now and
   * then. Default ["websocket", "sse", "longpoll"] (SSE where EventSource exists).
   */
  transports?: TransportName[];
  /** Default: the url's host, with http(s), and its path's last segment /ws replaced by /lp (any other path: /lp). */
  longPollUrl?: string;
  /** Default: the url's host, with http(s), and its path's last segment /ws replaced by /sse (any other path: /sse). */
  sseUrl?: string;
  /** ms, default 500. */
  minReconnectDelay?: number;
  /** ms, default 20000. */
  maxReconnectDelay?: number;
  /** ms a transport has to bring its first message before the next is tried; default 3000. */
  fallbackTimeout?: number;
  /** A name the client gives itself (connect's `name`). */
  name?: string;
  /** ms a command waits for its reply (and for a connection); default 10000. */
  timeout?: number;
  /** ms between ping commands over WebSocket and SSE; default 25000 (or the connect result's `ping`). */
  pingInterval?: number;
  /** ms a ping may stay unanswered; default pingInterval + 10000. */
  pingTimeout?: number;
  /** The server's long-poll hold time, ms; default 25000 (dead after 2x + 10 s of silence). */
  pollTimeout?: number;
  /** The WebSocket class; default globalThis.WebSocket. */
  WebSocket?: unknown;
  /** The EventSource class; default globalThis.EventSource. */
  EventSource?: unknown;
  /** The fetch function; default globalThis.fetch. */
  fetch?: (input: string, init?: Record<string, any>) => Promise<{ ok: boolean; status: number; text(): Promise<string> }>;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (id: any) => void;
  /** A number in [0, 1); default Math.random. */
  random?: () => number;
  /** ms since the epoch; default Date.now. */
  now?: () => number;
  /**
   * Where "online" and "visibilitychange" are heard (default: the window, in a browser).
   * null turns it off.
   */
  lifecycleTarget?: EventTarget | null;
  /** Whether the page is hidden (default: document.visibilityState): no timeouts then. */
  hidden?: () => boolean;
  /**
   * Filling gaps in offsets: publications held behind a gap at most (default 1000) and
   * history reads for one gap at most (default 10); past either it is given up.
   */
  gaps?: { maxHeld?: number; maxReads?: number };
  /** Keep publishes until acknowledged, sent again after reconnects (on by default; false turns it off). */
  outbox?: boolean | OutboxOptions;
  /**
   * One connection for all the tabs of the origin (off by default): the tab holding a
   * Web Lock connects, the other tabs' clients go through it, with the same API; when
   * it closes another tab takes over and every subscription recovers.
   */
  shareTabs?: boolean | ShareTabsOptions;
}

export interface ShareTabsOptions {
  /** Tabs share when their clients have the same hub URL and name; default "". */
  name?: string;
  /** Default navigator.locks. */
  locks?: { request(name: string, options: { signal?: AbortSignal }, fn: () => Promise<void> | void): Promise<void> };
  /** Default globalThis.BroadcastChannel. */
  BroadcastChannel?: any;
}

/** Which tabs' connections want which channels (shareTabs' leader). */
export class ChannelCounts {
  /** True when it is the first to want the channel. */
  add(channel: string, conn: string): boolean;
  /** True when no connection wants the channel now. */
  remove(channel: string, conn: string): boolean;
  /** The channels no connection wants once this one went. */
  removeConn(conn: string): string[];
  /** Who wanted a channel the hub ended. */
  removeChannel(channel: string): string[];
  has(channel: string, conn: string): boolean;
  conns(channel: string): string[];
  channels(): string[];
}

/** `client.transport` of a client that goes through the leader tab. */
export const TAB_TRANSPORT: "tab";

/** What happens to a publish when the outbox is full. */
export type OutboxPolicy = "reject-new" | "drop-oldest";

export interface OutboxOptions {
  /** Publishes kept at most; default 100 (OUTBOX_MAX). */
  max?: number;
  /** Default "reject-new". */
  policy?: OutboxPolicy;
  /** Where the outbox survives a page reload (opt-in): localStorage, or the like. */
  storage?: {
    getItem(key: string): string | null;
    setItem(key: string, value: string): void;
    removeItem(key: string): void;
  } | null;
  /** The storage item's name; default "backchannel.outbox". */
  storageKey?: string;
}

/** A publish waiting in the outbox. */
export interface OutboxEntry {
  key: string;
  channel: string;
  data: any;
  created: number;
}

/** The fate of a kept publish: the client's `outbox` event. */
export interface PublishFate {
  status: "queued" | "acknowledged" | "refused" | "dropped";
  /** Its idempotency key. */
  key: string;
  channel: string;
  data: any;
  /** With "acknowledged". */
  result?: PublishResult;
  /** With "refused" (the hub's code, or SUBSCRIPTION_CLOSED) and "dropped" (OUTBOX_FULL). */
  error?: BackchannelError;
}

/** A token the hub refused (the client's `token` event). */
export interface TokenRefusal {
  /** 109 (connect), 3004 (expired) or 3500 (invalid). */
  code: number;
  reason: string;
  /** Whether the client asks getToken for a new token and tries again. */
  retry: boolean;
}

/** The pieces of a transport (registerTransport). */
export interface TransportContext {
  url: string;
  longPollUrl: string | null;
  sseUrl: string | null;
  WebSocket: any;
  EventSource: any;
  fetch: any;
  timers: { setTimeout: (fn: () => void, ms: number) => any; clearTimeout: (id: any) => void };
  /** Where the page's "pagehide" is heard (null: nowhere). */
  lifecycleTarget: EventTarget | null;
}

export interface TransportHandlers {
  onFrame(text: string): void;
  /** The server answered (a poll, even empty). */
  onActivity(): void;
  onClose(info: { code: number; reason: string; reconnect?: boolean }): void;
}

export interface Transport {
  readonly name: string;
  /** Opens, sending this frame (whose first command is connect) first. */
  open(firstFrame: string): void;
  send(frame: string): void;
  close(): void;
}

export interface TransportKind {
  create(ctx: TransportContext, handlers: TransportHandlers): Transport;
  available?(ctx: TransportContext): boolean;
}

export interface SubscribedContext {
  channel: string;
  /** Whether the subscribe asked for recovery. */
  recovering: boolean;
  /** null when not recovering. */
  recovered: boolean | null;
  epoch: string | null;
  offset: number | null;
}

export interface SubscriptionOptions {
  /** Each publication, in order, recovered ones included, never twice. */
  onPublication?: (pub: Publication) => void;
  onJoin?: (ctx: { channel: string; info: ClientInfo }) => void;
  onLeave?: (ctx: { channel: string; info: ClientInfo }) => void;
  /**
   * The subscription ended: by unsubscribe() (code 0), by the server (its code), or
   * after an error that trying again cannot fix (the error's code).
   */
  onUnsubscribe?: (ctx: { channel: string; code: number; reason: string }) => void;
  /** Each time it is (re)subscribed. */
  onSubscribed?: (ctx: SubscribedContext) => void;
  /**
   * After a reconnection, the missed publications could not all be recovered: reload
   * the state by other means. Also called (with `gap: true`) when a gap in offsets
   * cannot be read back from history. Without it, onError gets error 112.
   */
  onRecoveryFailed?: (ctx: { channel: string; epoch: string | null; offset: number | null; gap?: boolean }) => void;
  onError?: (err: BackchannelError) => void;
  /** A token for this channel (private channels). */
  token?: string;
  /** Gets a channel token, once per connection and when the hub says it expired. */
  getToken?: (ctx: { channel: string; client: string | null }) => Promise<string>;
  /** A position to recover from on the first subscribe. */
  since?: StreamPosition;
}

export interface PublishResult {
  offset: number;
  epoch?: string;
  duplicate?: boolean;
}

export interface PresenceResult {
  clients?: Record<string, ClientInfo>;
  count?: number;
  users?: number;
}

export interface PresenceStats {
  /** Connections subscribed. */
  count: number;
  /** Distinct users they belong to. */
  users: number;
}

export interface HistoryResult {
  publications: Publication[];
  epoch: string;
  offset: number;
  recovered: boolean;
}

export interface ClientEvents {
  state: (state: ClientState, previous: ClientState) => void;
  error: (err: BackchannelError) => void;
  disconnect: (info: DisconnectInfo) => void;
  transport: (name: TransportName) => void;
  /** A token was refused; with retry, getToken is asked once for a new one. */
  token: (info: TokenRefusal) => void;
  /** A kept publish was queued, acknowledged, refused or dropped. */
  outbox: (fate: PublishFate) => void;
  /** The server subscribed this connection to a channel: set its callbacks. */
  subscription: (sub: Subscription) => void;
}

export const PROTOCOL_VERSION: 1;
export const MAX_BATCH: 100;
export const MAX_DEPTH: 32;

export const ErrorCode: Readonly<{
  TIMEOUT: 1;
  CLIENT_CLOSED: 2;
  CONNECTION_LOST: 3;
  SUBSCRIPTION_CLOSED: 4;
  BAD_ARGUMENT: 5;
  BAD_RESPONSE: 6;
  OUTBOX_FULL: 7;
  INTERNAL: 100;
  UNAUTHORIZED: 101;
  UNKNOWN_CHANNEL: 102;
  PERMISSION_DENIED: 103;
  METHOD_NOT_FOUND: 104;
  ALREADY_SUBSCRIBED: 105;
  LIMIT_EXCEEDED: 106;
  BAD_REQUEST: 107;
  NOT_AVAILABLE: 108;
  TOKEN_EXPIRED: 109;
  NOT_SUBSCRIBED: 110;
  TOO_MANY_REQUESTS: 111;
  UNRECOVERABLE_POSITION: 112;
  MESSAGE_TOO_LARGE: 113;
  NOT_CONNECTED: 114;
  ALREADY_CONNECTED: 115;
  UNAVAILABLE: 116;
  UNSUBSCRIBED: 117;
}>;

export const DisconnectCode: Readonly<{
  NORMAL_CLOSURE: 1000;
  CONNECTION_LOST: 1006;
  SHUTDOWN: 3000;
  SERVER_ERROR: 3001;
  SLOW_CONSUMER: 3002;
  IDLE_TIMEOUT: 3003;
  TOKEN_EXPIRED: 3004;
  CONNECT_TIMEOUT: 3005;
  FORCE_RECONNECT: 3006;
  INVALID_TOKEN: 3500;
  BAD_PROTOCOL: 3501;
  UNSUPPORTED_VERSION: 3502;
  FORCE_DISCONNECT: 3503;
  CONNECTION_LIMIT: 3504;
  FLOOD: 3505;
}>;

/** An error answering a command, or one the client raises itself. */
export class BackchannelError extends Error {
  constructor(code: number, message: string, temporary?: boolean, context?: string);
  code: number;
  temporary: boolean;
  /** Where it happened: "connect", "refresh", "subscribe", "publish", ... */
  context: string | undefined;
}

/** A reply to a command. */
export type Reply =
  | { id: number; result: Record<string, any> }
  | { id: number; error: { code: number; message: string; temporary: boolean } };

/** A push: `push` names its kind. */
export interface Push {
  push: string;
  [member: string]: any;
}

/** Whether a disconnect code asks the client to connect again. */
export function shouldReconnect(code: number): boolean;
/** One command as a line of wire text; throws BackchannelError (BAD_ARGUMENT) for what the hub refuses. */
export function encodeCommand(id: number, method: string, params?: Record<string, any>): string;
/** Encoded commands joined into one frame (1 to MAX_BATCH). */
export function encodeFrame(lines: string[]): string;
/** One line of a server frame; null for a blank line; throws BackchannelError (BAD_RESPONSE). */
export function decodeLine(line: string): Reply | Push | null;
/** A whole server frame. */
export function decodeFrame(text: string): Array<Reply | Push>;
/** The long-polling URL for a WebSocket URL: same host, http(s), the path's last segment /ws replaced by /lp (`ws://h/realtime/ws` gives `http://h/realtime/lp`); any other path gives /lp. */
export function defaultLongPollUrl(url: string): string | null;
/** The Server-Sent Events URL for a WebSocket URL: as defaultLongPollUrl, with /sse. */
export function defaultSseUrl(url: string): string | null;
/** Forgets which transport this page fell back to (for tests). */
export function resetTransportMemory(): void;
/** The transport this page's clients start with since their first did not get through, or null. */
export function fallbackTransport(): TransportName | null;
/** Whether clients of this page currently start with long polling. */
export function usingLongPollFallback(): boolean;
/** Registers (or replaces) a transport that options.transports may name. */
export function registerTransport(name: string, kind: TransportKind): void;
export function transportKind(name: string): TransportKind | undefined;

/** Applies joins and leaves, in order, to a presence snapshot; returns a new one. */
export function applyPresence(
  snapshot: Record<string, ClientInfo>,
  events: Array<{ type: "join" | "leave"; info: ClientInfo }>,
): Record<string, ClientInfo>;
/** The users of a presence snapshot, each once, sorted. */
export function presenceUsers(snapshot: Record<string, ClientInfo>): string[];

export const OUTBOX_MAX: 100;
/** A random idempotency key. */
export function newKey(): string;

/** Publishes waiting for their acknowledgement, bounded, optionally in storage. */
export class Outbox {
  constructor(options?: OutboxOptions);
  readonly max: number;
  readonly policy: OutboxPolicy;
  readonly size: number;
  entries(channel?: string): OutboxEntry[];
  add(entry: OutboxEntry): { accepted: boolean; dropped: OutboxEntry | null };
  remove(key: string): boolean;
  has(key: string): boolean;
}

export const MAX_HELD: 1000;
export const MAX_GAP_READS: 10;

/** A channel's publications in offset order, each once, with the range missing. */
export class Sequencer {
  constructor(epoch?: string | null, offset?: number | null, maxHeld?: number);
  readonly maxHeld: number;
  readonly epoch: string | null;
  readonly offset: number | null;
  readonly missingTo: number | null;
  readonly gap: { epoch: string; offset: number; to: number } | null;
  /** Where a gap was given up for holding too much (push), until taken (set to null). */
  lostAt: { epoch: string | null; offset: number | null } | null;
  reset(epoch: string | null, offset: number | null): void;
  push(pub: Publication): Publication[];
  dropped(epoch: string, offset: number): void;
  filled(pubs: Publication[], complete: boolean): { deliver: Publication[]; lost: boolean };
}

export class Client {
  constructor(url: string, options?: ClientOptions);
  readonly url: string;
  readonly state: ClientState;
  /** The client id of the current connection. */
  readonly clientId: string | null;
  /** The user the token names ("" when anonymous). */
  readonly user: string | null;
  /** The transport of the current connection. */
  readonly transport: TransportName | null;
  /** When the token expires (Unix seconds). */
  readonly expires: number | null;
  /** Publishes waiting for their acknowledgement (null with `outbox: false`). */
  readonly outbox: Outbox | null;
  /** With shareTabs: whether this tab holds the shared connection (null without). */
  readonly leader: boolean | null;
  /** When the next reconnect attempt is due (ms, options.now's clock) while the client
   * waits out its backoff, else null. */
  readonly reconnectAt: number | null;

  on<E extends keyof ClientEvents>(event: E, fn: ClientEvents[E]): this;
  off<E extends keyof ClientEvents>(event: E, fn: ClientEvents[E]): this;

  /** Resolves once connected; rejects if closed first or refused for good. */
  connect(): Promise<void>;
  /** Closes and stops reconnecting; subscriptions come back on connect(). */
  close(): void;

  /** Subscribes to a channel (one subscription per channel). */
  subscribe(channel: string, options?: SubscriptionOptions): Subscription;
  getSubscription(channel: string): Subscription | undefined;
  /** Resolves with what the procedure returned. */
  rpc(method: string, data?: unknown): Promise<any>;
  /** Resolves once acknowledged. */
  send(data: unknown): Promise<void>;
}

export class Subscription {
  private constructor();
  readonly client: Client;
  readonly channel: string;
  readonly state: SubscriptionState;
  /** The epoch of the last publication seen (or of the subscribe result). */
  readonly epoch: string | null;
  /** The offset of the last publication seen (or of the subscribe result). */
  readonly offset: number | null;
  /** Whether the server made it (a `subscribe` push). */
  readonly server: boolean;

  /** Sets callbacks after the fact (a subscription the server made). */
  setCallbacks(callbacks: SubscriptionOptions): this;

  /** Resolves once subscribed; rejects if it ends or the client closes first. */
  ready(): Promise<void>;
  /**
   * Rejects with a BackchannelError {code, message, temporary}. With the client's
   * outbox, settles with the publish's fate, however many reconnects that takes.
   */
  publish(data: unknown, options?: { idempotencyKey?: string }): Promise<PublishResult>;
  /** Every client (following the hub's pages), or `{count, users}` in count-only channels. */
  presence(): Promise<PresenceResult>;
  /** How many connections and distinct users, counted by the hub. */
  presenceStats(): Promise<PresenceStats>;
  history(options?: { limit?: number; since?: StreamPosition }): Promise<HistoryResult>;
  /** Ends the subscription (onUnsubscribe with code 0). */
  unsubscribe(): void;
}
