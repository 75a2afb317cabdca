// Node `ws` peer: /ws broadcasts every text message to every client, /echo answers each
// message with itself. Prints `listening on http://…` (port 0 picks a free one).
import { createServer } from 'node:http';
import { WebSocketServer } from 'ws';

const addr = process.argv[2] ?? '127.0.0.1:0';
const [host, port] = addr.split(':');
const server = createServer();
const fanout = new WebSocketServer({ noServer: true });
const echo = new WebSocketServer({ noServer: true });
server.on('upgrade', (req, socket, head) => {
  const wss = req.url.startsWith('/echo') ? echo : fanout;
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
});
fanout.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    const text = data.toString();
    for (const client of fanout.clients) if (client.readyState === 1) client.send(text);
  });
});
echo.on('connection', (ws) => ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary })));
server.listen(Number(port), host, () => {
  const a = server.address();
  console.log(`listening on http://${a.address}:${a.port}`);
});
