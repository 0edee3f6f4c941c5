// Compiled (never run) by tsc in tests/app/test_browser_client.py: the API as a page
// uses it must type-check against backchannel.d.ts, and misuse must not.
import {
  applyPresence,
  BackchannelError,
  Client,
  ErrorCode,
  fallbackTransport,
  Outbox,
  presenceUsers,
  registerTransport,
  Sequencer,
  type ClientInfo,
  type PublishFate,
  type TokenRefusal,
} from "../backchannel.js";

const client = new Client("wss://example.com/ws", {
  getToken: async () => "token",
  outbox: { max: 50, policy: "drop-oldest", storage: globalThis.localStorage ?? null },
  transports: ["websocket", "sse", "longpoll"],
  sseUrl: "https://example.com/realtime/sse",
  shareTabs: { name: "app" },
});
const leads: boolean | null = client.leader;
console.log(leads);
client.on("outbox", (fate: PublishFate) => {
  if (fate.status === "refused") console.log(fate.error?.code, fate.key);
});
client.on("token", (info: TokenRefusal) => console.log(info.code, info.retry));
client.on("subscription", (sub) => sub.setCallbacks({ onPublication: (pub) => console.log(pub.data) }));
const chat = client.subscribe("chat:lobby", {
  onPublication: (pub) => console.log(pub.offset, pub.epoch),
  onRecoveryFailed: ({ gap }) => console.log(gap === true),
});
async function main(): Promise<void> {
  await client.connect();
  const { offset, duplicate } = await chat.publish({ text: "hi" }, { idempotencyKey: "k" });
  console.log(offset, duplicate, client.outbox?.size);
  const { clients = {} } = await chat.presence();
  const { count, users } = await chat.presenceStats();
  console.log(count + users);
  let online: Record<string, ClientInfo> = clients;
  online = applyPresence(online, [{ type: "leave", info: { client: "c", user: "u" } }]);
  console.log(presenceUsers(online));
  const err = new BackchannelError(ErrorCode.OUTBOX_FULL, "full", true);
  console.log(err.temporary);
}
void main();

const outbox = new Outbox({ max: 3 });
outbox.add({ key: "k", channel: "c", data: 1, created: 0 });
const order = new Sequencer("E", 0);
console.log(order.push({ channel: "c", data: 1, offset: 1, epoch: "E" }).length, order.gap?.to);
const through: "websocket" | "sse" | "longpoll" | string | null = fallbackTransport();
console.log(through);
registerTransport("custom", { create: (ctx, handlers) => ({ name: "custom", open: () => handlers.onActivity(), send: () => undefined, close: () => undefined }) });

// @ts-expect-error: a policy that does not exist
new Outbox({ policy: "keep-all" });
// @ts-expect-error: events are named
client.on("publication", () => undefined);
