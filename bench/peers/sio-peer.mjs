// Node socket.io peer (websocket transport only, default namespace `/` on `/socket.io/`):
// `join` (with an ack) puts the socket in a room and acks with no data; `pub` broadcasts
// its argument as `msg` to every other socket in room `bench`; `echo` acks with its
// argument. Prints `listening on http://…` (port 0 picks a free one).
import { createServer } from 'node:http';
import { Server } from 'socket.io';

const addr = process.argv[2] ?? '127.0.0.1:0';
const [host, port] = addr.split(':');
const server = createServer();
const io = new Server(server, {
  transports: ['websocket'],
  serveClient: false,
  perMessageDeflate: false,
});
io.on('connection', (socket) => {
  socket.on('join', (room, ack) => {
    socket.join(room);
    if (typeof ack === 'function') ack();
  });
  socket.on('pub', (msg) => socket.to('bench').emit('msg', msg));
  socket.on('echo', (msg, ack) => {
    if (typeof ack === 'function') ack(msg);
  });
});
server.listen(Number(port), host, () => {
  const a = server.address();
  console.log(`listening on http://${a.address}:${a.port}`);
});
