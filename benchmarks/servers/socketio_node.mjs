// node's socket.io 4.8 for benchmarks/hub.py: rooms as channels, the same events as
// socketio_python.py. `node socketio_node.mjs --port P`; prints READY once listening and
// exits when its standard input closes (the runner holds the other end).
import { createServer } from "node:http";
import { Server } from "socket.io";

const args = process.argv.slice(2);
const port = Number(args[args.indexOf("--port") + 1]);
const host = args.includes("--host") ? args[args.indexOf("--host") + 1] : "127.0.0.1";

const http = createServer();
// WebSocket only, no compression, the default ping interval (25 s): as the Python servers.
const io = new Server(http, {
  transports: ["websocket"],
  perMessageDeflate: false,
  httpCompression: false,
  maxHttpBufferSize: 2 ** 21,
  serveClient: false,
});

io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    socket.join(room);
    if (typeof ack === "function") ack(true);
  });
  // Every socket in the room gets it, the sender included (io.to, not socket.to).
  socket.on("publish", (message) => {
    io.to(message.room).emit("pub", message.data);
  });
});

http.listen({ port, host, backlog: 1024 }, () => {
  process.stdout.write("READY\n");
});
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
process.on("SIGTERM", () => process.exit(0));
