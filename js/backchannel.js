// The browser client of backchannel's hub: wire format v1 (docs/protocol.md) over
// WebSocket, with Server-Sent Events and long polling as fallbacks. Plain ES modules,
// no build step, no dependencies: this file gathers the public API of the modules in lib/.
//
//   lib/codes.js         error and disconnect codes, BackchannelError
//   lib/wire.js          encoding commands, decoding replies and pushes (pure)
//   lib/transports.js    WebSocket, SSE, long polling, and the registry of transports
//   lib/client.js        the connection that stays up
//   lib/subscription.js  a channel's subscription, in order, gaps filled (Sequencer)
//   lib/presence.js      presence kept up to date from joins and leaves (pure)
//   lib/outbox.js        publishes kept until acknowledged (pure)
//   lib/tabs.js          one connection for all the tabs of an origin (shareTabs)

export { BackchannelError, DisconnectCode, ErrorCode, MAX_BATCH, MAX_DEPTH, PROTOCOL_VERSION, shouldReconnect } from "./lib/codes.js";
export { decodeFrame, decodeLine, encodeCommand, encodeFrame } from "./lib/wire.js";
export {
  defaultLongPollUrl,
  defaultSseUrl,
  fallbackTransport,
  registerTransport,
  resetTransportMemory,
  transportKind,
  usingLongPollFallback,
} from "./lib/transports.js";
export { Client } from "./lib/client.js";
export { MAX_GAP_READS, MAX_HELD, Sequencer, Subscription } from "./lib/subscription.js";
export { applyPresence, presenceUsers } from "./lib/presence.js";
export { OUTBOX_MAX, Outbox, newKey } from "./lib/outbox.js";
export { ChannelCounts, TAB_TRANSPORT } from "./lib/tabs.js";
