// The demo chat (index.html): the browser client as any page would use it, showing what
// happens to the connection, to messages sent while offline, and to presence.
import { Client } from "/js/backchannel.js";

const $ = (id) => document.getElementById(id);
const NAME = /^[A-Za-z0-9_.-]{1,32}$/;
const rooms = ["lobby", "random", "support"];
const params = new URLSearchParams(location.search);
const transport = params.get("transport");
let client = null; // the Client, once a name is chosen
let me = null; // our user name, as the token endpoint spelled it
let currentRoom = null;
let view = null; // the current room's state: {room, chat, typing, epoch, online, typers, ...}
let joining = false;
let lastDrop = null; // {code, reason} of the last disconnect, until connected again
let statusTimer = null; // ticks the "reconnecting in N s" countdown
window.demo = { get client() { return client; }, room: () => currentRoom };

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text; // user text is never HTML
  return node;
}

function showError(text) { $("error").textContent = text; }

async function fetchToken(user) {
  const res = await fetch("/demo/token", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ user }),
  });
  let body = null;
  try { body = await res.json(); } catch { /* not JSON */ }
  if (!res.ok || typeof body?.token !== "string") {
    throw new Error(body?.error?.message || `token request failed (HTTP ${res.status})`);
  }
  return body;
}

async function login(name) {
  if (joining || client) return;
  joining = true;
  $("login-error").textContent = "";
  let first;
  try {
    first = await fetchToken(name);
  } catch (err) {
    $("login").hidden = false;
    $("user").value = name;
    $("login-error").textContent = err.message;
    return;
  } finally {
    joining = false;
  }
  me = typeof first.user === "string" && first.user ? first.user : name;
  let cached = first.token; // the first getToken call uses it; later ones (refresh) ask again
  const getToken = async () => {
    if (cached) { const token = cached; cached = null; return token; }
    return (await fetchToken(me)).token;
  };
  // Messages sent while offline wait in the outbox and go once the connection is back,
  // across a reload too (sessionStorage: this tab's own, so two tabs never share one).
  const options = { getToken, outbox: { storage: sessionStorage, storageKey: `backchannel.outbox.${me}` } };
  if (transport === "websocket" || transport === "sse" || transport === "longpoll") options.transports = [transport];
  const wsUrl = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`;
  client = new Client(wsUrl, options);
  client.on("state", (state) => { if (state === "connected") lastDrop = null; showStatus(); });
  client.on("transport", showStatus);
  client.on("disconnect", ({ code, reason }) => { lastDrop = { code, reason }; showStatus(); });
  client.on("outbox", onOutbox);
  client.on("error", (err) => console.warn("backchannel:", err.code, err.message, err.context ?? ""));
  $("login").hidden = true; $("app").hidden = false;
  $("me").textContent = `as ${me}`;
  params.set("user", me);
  const room = params.get("room");
  joinRoom(room && NAME.test(room) ? room : "lobby");
  client.connect().catch((err) => showError(`Not connected: ${err.message} (${err.code})`));
}

function showStatus() {
  const status = $("status");
  // A disconnect is told before the state changes: no transport means not connected.
  const state = client.state === "connected" && !client.transport ? "disconnected" : client.state;
  clearTimeout(statusTimer);
  status.dataset.state = state;
  status.dataset.transport = client.transport || "";
  const why = lastDrop ? ` · ${lastDrop.reason || "connection lost"} (${lastDrop.code})` : "";
  const at = client.reconnectAt;
  if (state === "connected") status.textContent = `connected · ${client.transport}`;
  else if (state === "connecting") status.textContent = lastDrop ? `reconnecting…${why}` : "connecting…";
  else if (state === "disconnected" && at !== null) {
    const left = at - Date.now(); // reconnectAt is on Date.now()'s clock (the default now)
    status.textContent = left > 0 ? `reconnecting in ${Math.ceil(left / 1000)} s${why}` : `reconnecting…${why}`;
    if (left > 0) statusTimer = setTimeout(showStatus, left % 1000 || 1000); // the next whole second
  } else status.textContent = `disconnected${why}`;
  status.title = lastDrop ? `${lastDrop.code} ${lastDrop.reason}` : "";
  // Who is online is only known while connected: greyed, as last seen, until then.
  $("presence").classList.toggle("offline", state !== "connected");
}

function renderRooms() {
  $("rooms").replaceChildren(...rooms.map((room) => {
    const button = Object.assign(el("button", "", `# ${room}`), { type: "button", onclick: () => joinRoom(room) });
    button.dataset.room = room;
    button.setAttribute("aria-current", String(room === currentRoom));
    const li = el("li");
    li.append(button);
    return li;
  }));
}

function joinRoom(room) {
  if (room === currentRoom) return;
  leaveRoom();
  if (!rooms.includes(room)) rooms.push(room);
  currentRoom = room;
  params.set("room", room);
  history.replaceState(null, "", `?${params}`);
  const v = view = { room, epoch: null, loaded: false, online: new Map(), typers: new Map(), lastTyping: 0 };
  const live = () => view === v;
  $("room-name").textContent = room;
  $("messages").replaceChildren();
  $("online").replaceChildren();
  $("typing").textContent = "";
  showError("");
  renderRooms();
  // Messages still waiting in the outbox (sent offline, maybe before a reload) show as pending.
  for (const entry of client.outbox?.entries(`chat:${room}`) ?? []) addPending(entry.key, entry.data);
  v.chat = client.subscribe(`chat:${room}`, {
    onPublication: (pub) => {
      if (!live()) return;
      addMessage(v, pub, true);
      stopTyping(v, pub.info?.user); // their message is what they were typing
    },
    onJoin: ({ info }) => { if (live()) { v.online.set(info.client, info.user); renderOnline(v); } },
    onLeave: ({ info }) => { if (live()) { v.online.delete(info.client); renderOnline(v); } },
    onSubscribed: () => { // each (re)subscribe: who is here now; history the first time
      if (!live()) return;
      loadPresence(v);
      if (!v.loaded) loadHistory(v);
    },
    onRecoveryFailed: ({ gap } = {}) => { // missed messages are gone: say so, read the stream again
      if (!live()) return;
      addNotice(gap ? "some messages could not be recovered"
        : "history was lost on the server: messages sent while you were away are gone");
      loadHistory(v);
    },
    onUnsubscribe: ({ code, reason }) => { if (live() && code !== 0) showError(`Left #${room}: ${reason} (${code})`); },
    onError: (err) => console.warn(`chat:${room}:`, err.code, err.message),
  });
  v.typing = client.subscribe(`typing:${room}`, {
    onPublication: (pub) => { if (live()) onTyping(v, pub); },
    onError: (err) => console.warn(`typing:${room}:`, err.code, err.message),
  });
}

function leaveRoom() {
  if (!view) return;
  view.chat.unsubscribe(); // on leaving a room: both channels
  view.typing.unsubscribe();
  for (const timer of view.typers.values()) clearTimeout(timer);
  view = currentRoom = null;
}

async function loadHistory(v) {
  try {
    const { publications, epoch } = await v.chat.history({ limit: 50 });
    if (view !== v) return;
    setEpoch(v, epoch);
    for (const pub of publications) addMessage(v, pub); // oldest first; addMessage sorts and dedupes
    v.loaded = true;
  } catch (err) { console.warn("history:", err.code, err.message); } // again on the next subscribe
}

async function loadPresence(v) {
  try {
    const { clients = {} } = await v.chat.presence();
    if (view !== v) return;
    v.online = new Map(Object.entries(clients).map(([id, info]) => [id, info.user]));
    renderOnline(v);
  } catch (err) { console.warn("presence:", err.code, err.message); }
}

function renderOnline(v) {
  const users = [...new Set(v.online.values())].sort((a, b) => a.localeCompare(b)); // two tabs: once
  $("online").replaceChildren(...users.map((user) => {
    const li = el("li", user === me ? "me" : "", user);
    li.dataset.user = user;
    return li;
  }));
}

function setEpoch(v, epoch) {
  // A new stream (the server lost the old one, or it expired): offsets start again at 1.
  // Messages of the old stream stay above, out of the new one's order.
  if (typeof epoch === "string") v.epoch = epoch;
}

// Anyone may publish any "at": only a time a Date can hold (else toISOString throws).
const isTime = (at) => Number.isFinite(at) && Math.abs(at) <= 8.64e15;

function timeOf(at) {
  const time = el("time", "", new Date(at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
  time.dateTime = new Date(at).toISOString();
  time.title = new Date(at).toLocaleString();
  return time;
}

// Pending messages (in the outbox) are kept at the end of the list, below the sent ones.
function insertAt(list, li) {
  const pending = list.querySelector("li.pending");
  if (pending) pending.before(li); else list.append(li);
}

function scrolled(list, add) {
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 60;
  add();
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function addMessage(v, pub, live = false) {
  const offset = pub.offset;
  if (!Number.isSafeInteger(offset)) return;
  const list = $("messages");
  setEpoch(v, pub.epoch);
  const epoch = v.epoch ?? "";
  const ours = (node) => node.dataset.epoch === epoch; // a message of this stream
  const pending = list.querySelector("li.pending");
  let before = pending ? pending.previousElementSibling : list.lastElementChild; // mostly appends
  while (before && ours(before) && Number(before.dataset.offset) > offset) before = before.previousElementSibling;
  if (before && ours(before) && Number(before.dataset.offset) === offset) return; // history and live overlap
  // A publication from the server (the HTTP API) has no publisher.
  const author = typeof pub.info?.user === "string" ? pub.info.user : "server";
  const data = pub.data && typeof pub.data === "object" ? pub.data : { text: pub.data };
  // The page that sent it stamped it (its clock); a backend's message is stamped on arrival.
  const at = isTime(data.at) ? data.at : live ? Date.now() : null;
  const li = el("li", author === me ? "message mine" : "message");
  li.dataset.offset = String(offset);
  li.dataset.epoch = epoch;
  if (at !== null) li.append(timeOf(at));
  li.append(el("span", "author", author), el("span", "text", String(data.text ?? "")));
  scrolled(list, () => { if (before) before.after(li); else list.prepend(li); });
}

function addNotice(text) {
  const list = $("messages");
  scrolled(list, () => insertAt(list, el("li", "notice", text)));
}

function addPending(key, data) {
  const list = $("messages");
  if (list.querySelector(`li.pending[data-key="${CSS.escape(key)}"]`)) return;
  const li = el("li", "message mine pending");
  li.dataset.key = key;
  if (isTime(data?.at)) li.append(timeOf(data.at));
  li.append(el("span", "author", me), el("span", "text", String(data?.text ?? "")), el("span", "sending", "sending…"));
  scrolled(list, () => list.append(li));
}

// Each publish kept by the outbox tells its fate: queued (pending), then acknowledged (the
// message takes its place in the stream), refused or dropped (marked as not sent).
function onOutbox({ status, key, channel, data, result, error }) {
  const v = view;
  if (!v || channel !== `chat:${v.room}`) return; // typing notices, or another room
  if (status === "queued") { addPending(key, data); return; }
  const li = $("messages").querySelector(`li.pending[data-key="${CSS.escape(key)}"]`);
  if (status === "acknowledged") {
    li?.remove();
    // Our own publication may come before or after this answer: shown once either way.
    addMessage(v, { offset: result?.offset, epoch: result?.epoch, info: { user: me }, data });
  } else if (li) {
    li.classList.replace("pending", "failed");
    li.querySelector(".sending").textContent = `not sent: ${error?.message} (${error?.code})`;
  }
}

function stopTyping(v, user) {
  if (!v.typers.has(user)) return;
  clearTimeout(v.typers.get(user));
  v.typers.delete(user);
  renderTyping(v);
}

function onTyping(v, pub) {
  const user = pub.info?.user;
  if (typeof user !== "string" || user === me || !pub.data?.typing) return; // ignore our own
  clearTimeout(v.typers.get(user));
  v.typers.set(user, setTimeout(() => { v.typers.delete(user); renderTyping(v); }, 4000));
  renderTyping(v);
}

function renderTyping(v) {
  if (view !== v) return;
  const users = [...v.typers.keys()];
  $("typing").textContent = users.length === 0 ? ""
    : users.length === 1 ? `${users[0]} is typing…`
    : users.length === 2 ? `${users[0]} and ${users[1]} are typing…`
    : "several people are typing…";
}

$("text").addEventListener("input", () => {
  const v = view;
  if (!v || !$("text").value || v.typing.state !== "subscribed") return;
  const now = Date.now();
  if (now - v.lastTyping < 2000) return; // at most every 2 s
  v.lastTyping = now;
  v.typing.publish({ typing: true }).catch((err) => console.warn("typing:", err.code, err.message));
});

$("compose").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("text");
  const text = input.value.trim();
  if (!text || !view) return;
  input.value = "";
  showError("");
  const sub = view.chat;
  try {
    // Kept and sent again after a reconnect until the hub answers; stamped with our clock.
    await sub.publish({ text, at: Date.now() });
  } catch (err) {
    showError(`Could not send: ${err.message} (${err.code})`);
    if (view?.chat === sub && !input.value) input.value = text;
  }
});

$("room-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const room = $("room-input").value.trim(), ok = NAME.test(room);
  $("room-error").textContent = ok ? "" : "1-32 letters, digits, _ - .";
  if (ok) { $("room-input").value = ""; joinRoom(room); }
});

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  if ($("user").value.trim()) login($("user").value.trim());
});

const user = params.get("user");
if (user) login(user);
else $("login").hidden = false;
