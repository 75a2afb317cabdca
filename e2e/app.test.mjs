// End-to-end: the real server binary serves the release bundle; Debian's Chromium (driven by
// playwright-core, never a downloaded browser) opens it and must show "connected".
// Run through scripts/test.sh, which sets SWITCHBOARD_SERVER and SWITCHBOARD_DIST.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { chromium } from 'playwright-core';

const SERVER = process.env.SWITCHBOARD_SERVER ?? '../target/debug/switchboard-server';
const DIST = process.env.SWITCHBOARD_DIST ?? '../dist';
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

/**
 * Starts the server on `addr` with its history in `dataDir` (a new directory unless
 * given: pass the old server's to restart it) and resolves with its process, base URL
 * and data directory.
 */
function startServer(
  addr = '127.0.0.1:0',
  extra = ['--demo-ticker', '100ms'],
  dataDir = mkdtempSync(join(tmpdir(), 'switchboard-e2e-')),
) {
  return new Promise((resolve, reject) => {
    const args = ['--addr', addr, '--dist', DIST, '--data-dir', dataDir, ...extra];
    const proc = spawn(SERVER, args, {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, RUST_LOG: 'warn' },
    });
    let out = '';
    const timer = setTimeout(() => reject(new Error(`server did not start: ${out}`)), 10_000);
    proc.stdout.on('data', (chunk) => {
      out += chunk;
      const m = out.match(/listening on (https?:\/\/[0-9.:]+)/);
      if (m) {
        clearTimeout(timer);
        resolve({ proc, url: m[1], dataDir });
      }
    });
    proc.on('exit', (code) => reject(new Error(`server exited with ${code}: ${out}`)));
  });
}

function stopServer(server) {
  return new Promise((resolve) => {
    if (server.proc.exitCode !== null) return resolve();
    server.proc.on('exit', resolve);
    server.proc.kill('SIGTERM');
  });
}

let browser;
let server;

/** Chromium as every test runs it, plus `extra` flags. */
function launch(extra = []) {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      // Playwright gives every launch a fresh, empty profile directory of its own.
      '--disable-dev-shm-usage',
      ...extra,
    ],
  });
}

before(async () => {
  server = await startServer();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  if (server) await stopServer(server);
});

/** A fresh page that fails the test on any uncaught page error. */
async function openApp(url, query = '') {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  await page.goto(`${url}${query}`);
  return { page, context, errors };
}

test('the page served by the real server connects and shows its client id and RTT', async () => {
  const { page, context, errors } = await openApp(server.url);
  await page.locator('#status', { hasText: 'connected' }).waitFor({ timeout: 15_000 });
  const id = (await page.locator('#client-id').textContent()).trim();
  assert.match(id, /^[A-Za-z0-9_-]{22}$/, 'a 128-bit random client id');
  await page.locator('#rtt', { hasText: 'ms' }).waitFor({ timeout: 10_000 });
  const rtt = parseFloat(await page.locator('#rtt').textContent());
  assert.ok(rtt >= 0 && rtt < 5000, `rtt ${rtt}`);
  assert.equal((await page.locator('#last-error').textContent()).trim(), 'none');
  await page.screenshot({ path: 'test-results/connected.png' });
  assert.deepEqual(errors, []);
  await context.close();
});

test('two tabs get two different client ids', async () => {
  const a = await openApp(server.url);
  const b = await openApp(server.url);
  for (const { page } of [a, b]) {
    await page.locator('#status', { hasText: 'connected' }).waitFor({ timeout: 15_000 });
  }
  const ida = await a.page.locator('#client-id').textContent();
  const idb = await b.page.locator('#client-id').textContent();
  assert.notEqual(ida, idb);
  await a.context.close();
  await b.context.close();
});

test('a client-side route deep link still loads the app', async () => {
  const { page, context, errors } = await openApp(`${server.url}/rooms/lobby`);
  await page.locator('#status', { hasText: 'connected' }).waitFor({ timeout: 15_000 });
  assert.deepEqual(errors, []);
  await context.close();
});

test('server restart: the page shows reconnecting, then reconnects by itself', async () => {
  const { page, context, errors } = await openApp(server.url);
  await page.locator('#status', { hasText: 'connected' }).waitFor({ timeout: 15_000 });
  const before = await page.locator('#client-id').textContent();
  const addr = server.url.replace('http://', '');
  await stopServer(server); // SIGTERM: clients get 1001 (going away) and reconnect
  await page.locator('#status', { hasText: 'reconnecting' }).waitFor({ timeout: 10_000 });
  await page.locator('#state-detail', { hasText: /attempt \d+ in \d+\.\d s/ }).waitFor({ timeout: 10_000 });
  server = await startServer(addr, undefined, server.dataDir);
  await page.locator('#status', { hasText: 'connected' }).waitFor({ timeout: 45_000 });
  assert.equal((await page.locator('#reconnects').textContent()).trim(), '1');
  assert.notEqual(await page.locator('#client-id').textContent(), before);
  assert.deepEqual(errors, []);
  await context.close();
});

/** Opens the app and joins `room` as `name`. */
async function joinAs(name, room = 'lobby', url = server.url, query = '') {
  const tab = await openApp(url, query);
  const { page } = tab;
  await page.locator('#status', { hasText: 'connected' }).waitFor({ timeout: 15_000 });
  await page.fill('#join-name', name);
  await page.fill('#join-room', room);
  await page.click('#join-button');
  await page.locator('#chat-input').waitFor();
  return tab;
}

async function say(page, text) {
  await page.fill('#chat-input', text);
  await page.click('#chat-send');
}

async function messages(page) {
  return page.locator('#messages .text').allTextContents();
}

test('two people chat in one room: presence, typing, messages both ways, leave', async () => {
  const room = `r${Date.now()}`;
  const ada = await joinAs('Ada', room);
  const bob = await joinAs('Bob', room);
  for (const { page } of [ada, bob]) {
    await page.locator('#member-count', { hasText: '2' }).waitFor({ timeout: 10_000 });
  }
  await ada.page.locator('#notices', { hasText: 'Bob joined' }).waitFor({ timeout: 5_000 });
  assert.deepEqual(await ada.page.locator('#members li').allTextContents(), ['Ada', 'Bob']);

  await ada.page.type('#chat-input', 'hel');
  await bob.page.locator('#typing', { hasText: 'Ada is typing' }).waitFor({ timeout: 5_000 });
  await say(ada.page, 'hello Bob');
  await bob.page.locator('#messages', { hasText: 'hello Bob' }).waitFor({ timeout: 5_000 });
  await say(bob.page, 'hi Ada');
  await ada.page.locator('#messages', { hasText: 'hi Ada' }).waitFor({ timeout: 5_000 });
  assert.deepEqual(await messages(ada.page), ['hello Bob', 'hi Ada']);
  assert.deepEqual(await messages(bob.page), ['hello Bob', 'hi Ada']);
  await ada.page.screenshot({ path: 'test-results/chat.png' });

  await bob.context.close();
  await ada.page.locator('#member-count', { hasText: '1' }).waitFor({ timeout: 10_000 });
  await ada.page.locator('#notices', { hasText: 'Bob left' }).waitFor({ timeout: 5_000 });
  assert.deepEqual(ada.errors, []);
  await ada.context.close();
});

test('server restart while typing: countdown, reconnect, queued messages once and in order, room restored', async () => {
  const room = `r${Date.now()}`;
  const ada = await joinAs('Ada', room);
  const bob = await joinAs('Bob', room);
  await ada.page.locator('#member-count', { hasText: '2' }).waitFor({ timeout: 10_000 });
  await say(ada.page, 'before');
  await bob.page.locator('#messages', { hasText: 'before' }).waitFor({ timeout: 5_000 });

  const addr = server.url.replace('http://', '');
  await stopServer(server);
  await ada.page.locator('#status', { hasText: 'reconnecting' }).waitFor({ timeout: 10_000 });
  await ada.page.locator('#state-detail', { hasText: /attempt \d+ in \d+\.\d s/ }).waitFor({ timeout: 10_000 });
  // typing while the server is down: the messages wait in the queue
  for (const text of ['one', 'two', 'three']) await say(ada.page, text);
  await ada.page.locator('#queued', { hasText: '3' }).waitFor({ timeout: 5_000 });

  server = await startServer(addr, undefined, server.dataDir);
  for (const { page } of [ada, bob]) {
    await page.locator('#status', { hasText: 'connected' }).waitFor({ timeout: 45_000 });
    // the room membership came back by itself
    await page.locator('#member-count', { hasText: '2' }).waitFor({ timeout: 10_000 });
  }
  await ada.page.locator('#queued', { hasText: /^0$/ }).waitFor({ timeout: 10_000 });
  await ada.page.locator('#messages', { hasText: 'three' }).waitFor({ timeout: 10_000 });
  await ada.page.waitForTimeout(300);
  assert.deepEqual(await messages(ada.page), ['before', 'one', 'two', 'three'], 'once and in order');
  // and the conversation goes on for both
  await say(bob.page, 'welcome back');
  await ada.page.locator('#messages', { hasText: 'welcome back' }).waitFor({ timeout: 5_000 });
  assert.deepEqual(ada.errors, []);
  assert.deepEqual(bob.errors, []);
  await ada.context.close();
  await bob.context.close();
});

/** Kills the server with SIGKILL (no shutdown at all) and waits for it to exit. */
function killServer(server) {
  return new Promise((resolve) => {
    if (server.proc.exitCode !== null || server.proc.signalCode !== null) return resolve();
    server.proc.on('exit', resolve);
    server.proc.kill('SIGKILL');
  });
}

test('SIGKILL mid-chat: the one who comes back last still gets every message, once, in order', async () => {
  const room = `k${Date.now()}`;
  const query = '?backoff_ms=100';
  const ada = await joinAs('Ada', room, server.url, query);
  const grace = await joinAs('Grace', room, server.url, query);
  await ada.page.locator('#member-count', { hasText: '2' }).waitFor({ timeout: 10_000 });
  const before = ['a1', 'g1', 'a2', 'g2', 'a3'];
  for (const text of before) {
    const [from, to] = text.startsWith('a') ? [ada, grace] : [grace, ada];
    await say(from.page, text);
    await to.page.locator('#messages .text', { hasText: new RegExp(`^${text}$`) })
      .waitFor({ timeout: 5_000 });
  }
  // Grace is away (her laptop lid is closed) until Ada is back and has sent everything:
  // the order that used to lose her 3 of the 8 messages.
  await grace.page.click('#offline-toggle');
  await grace.page.locator('#status', { hasText: 'closed' }).waitFor({ timeout: 5_000 });
  await ada.page.type('#chat-input', 'while the server di');
  const addr = server.url.replace('http://', '');
  await killServer(server);
  await ada.page.locator('#status', { hasText: 'reconnecting' }).waitFor({ timeout: 10_000 });
  const after = ['a4', 'a5', 'a6'];
  for (const text of after) await say(ada.page, text);
  await ada.page.locator('#queued', { hasText: '3' }).waitFor({ timeout: 5_000 });
  server = await startServer(addr, undefined, server.dataDir);
  await ada.page.locator('#status', { hasText: 'connected' }).waitFor({ timeout: 30_000 });
  await ada.page.locator('#queued', { hasText: /^0$/ }).waitFor({ timeout: 10_000 });
  await ada.page.locator('#messages .text', { hasText: /^a6$/ }).waitFor({ timeout: 10_000 });
  // Now Grace comes back.
  await grace.page.click('#offline-toggle');
  await grace.page.locator('#status', { hasText: 'connected' }).waitFor({ timeout: 15_000 });
  await grace.page.locator('#messages .text', { hasText: /^a6$/ }).waitFor({ timeout: 10_000 });
  await grace.page.locator('#notices', { hasText: 'caught up' }).waitFor({ timeout: 5_000 });
  await grace.page.waitForTimeout(300);
  const all = [...before, ...after];
  assert.deepEqual(await messages(grace.page), all, 'Grace: every message once, in order');
  assert.deepEqual(await messages(ada.page), all, 'Ada: the same');
  // Someone joining now sees the conversation so far (the room's recent lines).
  const carol = await joinAs('Carol', room);
  await carol.page.locator('#messages .text', { hasText: /^a6$/ }).waitFor({ timeout: 10_000 });
  assert.deepEqual(await messages(carol.page), all, 'Carol: the recent lines on joining');
  for (const t of [ada, grace, carol]) {
    assert.deepEqual(t.errors, []);
    await t.context.close();
  }
});

test('lines typed offline survive a page reload and are sent once', async () => {
  const room = `o${Date.now()}`;
  const ada = await joinAs('Ada', room);
  const bob = await joinAs('Bob', room);
  await ada.page.locator('#member-count', { hasText: '2' }).waitFor({ timeout: 10_000 });
  await ada.page.click('#offline-toggle');
  await ada.page.locator('#status', { hasText: 'closed' }).waitFor({ timeout: 5_000 });
  for (const text of ['kept 1', 'kept 2']) await say(ada.page, text);
  await ada.page.locator('#queued', { hasText: '2' }).waitFor({ timeout: 5_000 });
  await ada.page.locator('#pending', { hasText: 'kept 2' }).waitFor({ timeout: 5_000 });
  // The tab reloads (a crash, an update, the user): the lines come back with the page,
  // connect and go out.
  await ada.page.reload();
  await ada.page.locator('#status', { hasText: 'connected' }).waitFor({ timeout: 15_000 });
  await bob.page.locator('#messages .text', { hasText: /^kept 2$/ }).waitFor({ timeout: 10_000 });
  await ada.page.locator('#queued', { hasText: /^0$/ }).waitFor({ timeout: 10_000 });
  // Reloaded again: nothing is sent twice.
  await ada.page.reload();
  await ada.page.locator('#status', { hasText: 'connected' }).waitFor({ timeout: 15_000 });
  await bob.page.waitForTimeout(500);
  assert.deepEqual(await messages(bob.page), ['kept 1', 'kept 2'], 'once each, in order');
  assert.deepEqual(ada.errors, []);
  await ada.context.close();
  await bob.context.close();
});

test('notifications become toasts and the ticker moves', async () => {
  const a = await openApp(server.url);
  const b = await openApp(server.url);
  for (const { page } of [a, b]) {
    await page.locator('#status', { hasText: 'connected' }).waitFor({ timeout: 15_000 });
  }
  await a.page.fill('#notify-text', 'Deploy finished');
  await a.page.click('#notify-send');
  await b.page.locator('#toasts', { hasText: 'Deploy finished' }).waitFor({ timeout: 5_000 });
  await b.page.locator('#ticker-price', { hasText: /\d+\.\d\d/ }).waitFor({ timeout: 5_000 });
  const first = await b.page.locator('#ticker-price').textContent();
  await b.page.waitForFunction(
    (p) => document.querySelector('#ticker-price').textContent !== p, first, { timeout: 5_000 });
  await a.context.close();
  await b.context.close();
});

test('go offline queues, go online delivers', async () => {
  const room = `r${Date.now()}`;
  const ada = await joinAs('Ada', room);
  const bob = await joinAs('Bob', room);
  await ada.page.locator('#member-count', { hasText: '2' }).waitFor({ timeout: 10_000 });
  await ada.page.click('#offline-toggle');
  await ada.page.locator('#status', { hasText: 'closed' }).waitFor({ timeout: 5_000 });
  await bob.page.locator('#member-count', { hasText: '1' }).waitFor({ timeout: 5_000 });
  await say(ada.page, 'sent while offline');
  await ada.page.locator('#queued', { hasText: '1' }).waitFor();
  await ada.page.click('#offline-toggle');
  await bob.page.locator('#messages', { hasText: 'sent while offline' }).waitFor({ timeout: 10_000 });
  await bob.page.locator('#member-count', { hasText: '2' }).waitFor({ timeout: 5_000 });
  assert.deepEqual(await messages(bob.page), ['sent while offline']);
  await ada.context.close();
  await bob.context.close();
});

test('a message typed offline shows as pending until acked, then as sent', async () => {
  const room = `r${Date.now()}`;
  const ada = await joinAs('Ada', room);
  await ada.page.click('#offline-toggle');
  await ada.page.locator('#status', { hasText: 'closed' }).waitFor({ timeout: 5_000 });
  await say(ada.page, 'waiting for the network');
  await ada.page.locator('#pending', { hasText: 'waiting for the network' }).waitFor();
  await ada.page.locator('#pending', { hasText: 'sending' }).waitFor();
  assert.deepEqual(await messages(ada.page), []);
  await ada.page.click('#offline-toggle');
  await ada.page.locator('#messages', { hasText: 'waiting for the network' }).waitFor({ timeout: 10_000 });
  await ada.page.waitForFunction(() => document.querySelectorAll('#pending li').length === 0, null, { timeout: 5_000 });
  // Times are the server's clock, shown as HH:MM:SS.
  assert.match(await ada.page.locator('#messages .ts').first().textContent(), /^\d\d:\d\d:\d\d$/);
  assert.deepEqual(ada.errors, []);
  await ada.context.close();
});

test('250 messages typed offline arrive complete, once, in order (a queue larger than the rate burst)', async () => {
  // The review's repro: Grace got 181-192 of 250, Ada's page 58-69 rate_limited errors.
  const room = `r${Date.now()}`;
  const ada = await joinAs('Ada', room);
  const grace = await joinAs('Grace', room);
  await ada.page.locator('#member-count', { hasText: '2' }).waitFor({ timeout: 10_000 });
  await ada.page.click('#offline-toggle');
  await ada.page.locator('#status', { hasText: 'closed' }).waitFor({ timeout: 5_000 });
  const sent = [];
  for (let i = 0; i < 250; i++) {
    sent.push(`m${i}`);
    await say(ada.page, `m${i}`);
  }
  await ada.page.locator('#queued', { hasText: /^250$/ }).waitFor({ timeout: 10_000 });
  await ada.page.click('#offline-toggle');
  await grace.page.waitForFunction(
    () => document.querySelectorAll('#messages li').length >= 250, null, { timeout: 30_000 });
  await grace.page.waitForTimeout(500);
  assert.deepEqual(await messages(grace.page), sent, 'complete, once, in order');
  await ada.page.locator('#queued', { hasText: /^0$/ }).waitFor({ timeout: 10_000 });
  assert.equal((await ada.page.locator('#dropped').textContent()).trim(), '0');
  const lastError = (await ada.page.locator('#last-error').textContent()).trim();
  assert.ok(!lastError.includes('rate_limited'), lastError);
  assert.deepEqual(ada.errors, []);
  await ada.context.close();
  await grace.context.close();
});

test('a dead link (server stopped with SIGSTOP) is detected and replaced', async () => {
  const own = await startServer('127.0.0.1:0', []);
  try {
    const { page, context, errors } = await openApp(own.url, '?ping_ms=1000&pong_ms=1500&backoff_ms=200');
    await page.locator('#status', { hasText: 'connected' }).waitFor({ timeout: 15_000 });
    own.proc.kill('SIGSTOP'); // the socket stays open; nothing answers
    await page.locator('#last-error', { hasText: 'no pong' }).waitFor({ timeout: 10_000 });
    assert.notEqual((await page.locator('#status').textContent()).trim(), 'connected');
    own.proc.kill('SIGCONT');
    await page.locator('#status', { hasText: 'connected' }).waitFor({ timeout: 30_000 });
    assert.deepEqual(errors, []);
    await context.close();
  } finally {
    own.proc.kill('SIGCONT');
    await stopServer(own);
  }
});

test('a frozen background tab wakes without reconnecting or flapping presence', async () => {
  // Chrome runs a background tab's timers late (once a minute) or, frozen, not at all; the
  // old hook judged the link by time since the last frame and reconnected on waking,
  // which made the user leave and rejoin every room.
  const room = `r${Date.now()}`;
  const query = '?ping_ms=500&pong_ms=1000';
  const ada = await joinAs('Ada', room, server.url, query);
  const grace = await joinAs('Grace', room, server.url, query);
  await grace.page.locator('#member-count', { hasText: '2' }).waitFor({ timeout: 10_000 });
  const cdp = await ada.context.newCDPSession(ada.page);
  await cdp.send('Page.enable');
  await cdp.send('Page.setWebLifecycleState', { state: 'frozen' });
  await grace.page.waitForTimeout(6_000); // 12 ping intervals, 6 pong timeouts
  await cdp.send('Page.setWebLifecycleState', { state: 'active' });
  await ada.page.waitForTimeout(3_000);
  assert.equal((await ada.page.locator('#reconnects').textContent()).trim(), '0');
  assert.equal((await ada.page.locator('#status').textContent()).trim(), 'connected');
  const notices = await grace.page.locator('#notices li').allTextContents();
  assert.ok(!notices.includes('Ada left'), `presence flapped: ${notices}`);
  await ada.context.close();
  await grace.context.close();
});

test('a 5 ms ticker renders without a long task', async () => {
  const fast = await startServer('127.0.0.1:0', ['--demo-ticker', '5ms']);
  try {
    const { page, context, errors } = await openApp(fast.url);
    await page.addInitScript(() => {});
    await page.locator('#status', { hasText: 'connected' }).waitFor({ timeout: 15_000 });
    await page.locator('#ticker-price', { hasText: /\d+\.\d\d/ }).waitFor({ timeout: 5_000 });
    const longest = await page.evaluate(() => new Promise((resolve) => {
      let max = 0;
      new PerformanceObserver((list) => {
        for (const e of list.getEntries()) max = Math.max(max, e.duration);
      }).observe({ type: 'longtask', buffered: false });
      setTimeout(() => resolve(max), 5_000);
    }));
    assert.ok(longest <= 50, `a long task of ${longest} ms`);
    const frames = parseInt((await page.locator('#frames').textContent()).split('/')[0], 10);
    assert.ok(frames > 500, `the ticker ran: ${frames} frames in`);
    assert.deepEqual(errors, []);
    await context.close();
  } finally {
    await stopServer(fast);
  }
});

/** The page's own requests as Chromium counted them: name, bytes on the wire, encoding. */
async function transfers(page) {
  return page.evaluate(() => [
    ...performance.getEntriesByType('navigation'),
    ...performance.getEntriesByType('resource'),
  ].map((e) => ({
    path: new URL(e.name).pathname,
    transfer: e.transferSize,
    encoded: e.encodedBodySize,
    decoded: e.decodedBodySize,
  })));
}

// The budget for a first visit, wasm + JS as sent (brotli), in bytes: a guard against
// growth, about 5% above what docs/benchmarks.md ("What the browser downloads") measured.
// The target is 100 KiB and is not met yet: that section says where the bytes go.
const FIRST_VISIT_BUDGET = Number(process.env.SWITCHBOARD_FIRST_VISIT_BUDGET ?? 155 * 1024);

test('a first visit downloads the bundle compressed; a second one only revalidates index.html', async () => {
  const context = await browser.newContext();
  const first = await context.newPage();
  const encodings = {};
  first.on('response', (r) => {
    encodings[new URL(r.url()).pathname] = r.headers()['content-encoding'] ?? 'identity';
  });
  await first.goto(server.url);
  await first.locator('#status', { hasText: 'connected' }).waitFor({ timeout: 15_000 });
  const got = await transfers(first);
  const code = got.filter((e) => /\.(wasm|js)$/.test(e.path));
  assert.equal(code.length, 2, `the wasm and its JS: ${JSON.stringify(got)}`);
  for (const e of code) {
    assert.equal(encodings[e.path], 'br', `${e.path} sent with brotli`);
    assert.ok(e.encoded < e.decoded / 2, `${e.path}: ${e.encoded} bytes for ${e.decoded}`);
  }
  const firstBytes = code.reduce((n, e) => n + e.encoded, 0);
  console.log(`first visit: wasm + JS ${firstBytes} bytes as sent`
    + ` (${code.map((e) => `${e.path} ${e.encoded}/${e.decoded}`).join(', ')})`);
  assert.ok(firstBytes <= FIRST_VISIT_BUDGET,
    `wasm + JS ${firstBytes} bytes, budget ${FIRST_VISIT_BUDGET}`);

  // A second visit (a new tab, same browser): every hashed asset from the cache, and
  // index.html revalidated (304, headers only).
  const second = await context.newPage();
  await second.goto(server.url);
  await second.locator('#status', { hasText: 'connected' }).waitFor({ timeout: 15_000 });
  const again = await transfers(second);
  const fetched = again.filter((e) => e.transfer > 0);
  assert.deepEqual(fetched.map((e) => e.path), ['/'], `only index.html: ${JSON.stringify(again)}`);
  assert.ok(fetched[0].transfer < 1024, `a 304 is headers only: ${fetched[0].transfer} bytes`);
  assert.ok(again.length >= 4, `the page still loaded its assets: ${JSON.stringify(again)}`);
  await context.close();
});

test('the precompressed copies decode to the built files', async () => {
  const { readdirSync, readFileSync } = await import('node:fs');
  const { request } = await import('node:http');
  const zlib = await import('node:zlib');
  const get = (path, accept) => new Promise((resolve, reject) => {
    request(`${server.url}${path}`, { headers: { 'accept-encoding': accept } }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ headers: res.headers, body: Buffer.concat(chunks) }));
    }).on('error', reject).end();
  });
  const files = readdirSync(DIST).filter((f) => /\.(wasm|js|css|svg|html)$/.test(f));
  assert.ok(files.length >= 4, `a built bundle in ${DIST}: ${files}`);
  for (const file of files) {
    const built = readFileSync(join(DIST, file));
    const path = file === 'index.html' ? '/' : `/${file}`;
    const br = await get(path, 'br');
    assert.equal(br.headers['content-encoding'], 'br', file);
    assert.ok(zlib.brotliDecompressSync(br.body).equals(built), `${file}.br decodes to ${file}`);
    const gz = await get(path, 'gzip');
    assert.equal(gz.headers['content-encoding'], 'gzip', file);
    assert.ok(zlib.gunzipSync(gz.body).equals(built), `${file}.gz decodes to ${file}`);
    const plain = await get(path, 'identity');
    assert.equal(plain.headers['content-encoding'], undefined, file);
    assert.ok(plain.body.equals(built), file);
    const immutable = file !== 'index.html';
    assert.equal(plain.headers['cache-control'],
      immutable ? 'public, max-age=31536000, immutable' : 'no-cache', file);
  }
});

test('over HTTPS with the development certificate the app connects by wss with permessage-deflate', async () => {
  // The dev certificate, made by the binary beside the server (as README shows).
  const dir = mkdtempSync(join(tmpdir(), 'switchboard-tls-'));
  const made = execFileSync(join(dirname(SERVER), 'switchboard-dev-cert'), ['--out', dir]).toString();
  const spki = made.match(/spki-sha256 (\S+)/)[1];
  const tls = await startServer('127.0.0.1:0', [
    '--tls-cert', join(dir, 'cert.pem'), '--tls-key', join(dir, 'key.pem'),
  ]);
  assert.match(tls.url, /^https:/);
  // Chromium trusts exactly this certificate's key, nothing else is relaxed.
  const trusting = await launch([`--ignore-certificate-errors-spki-list=${spki}`]);
  try {
    const tabs = [];
    for (const name of ['Ada', 'Bob']) {
      const context = await trusting.newContext();
      const page = await context.newPage();
      const errors = [];
      page.on('pageerror', (e) => errors.push(e));
      // The handshake as Chromium saw it (the page cannot read WebSocket headers).
      const cdp = await context.newCDPSession(page);
      await cdp.send('Network.enable');
      const handshake = {};
      cdp.on('Network.webSocketCreated', (e) => { handshake.url = e.url; });
      cdp.on('Network.webSocketHandshakeResponseReceived', (e) => {
        handshake.status = e.response.status;
        handshake.headers = e.response.headers;
      });
      await page.goto(tls.url);
      await page.locator('#status', { hasText: 'connected' }).waitFor({ timeout: 15_000 });
      assert.match(handshake.url, /^wss:\/\/127\.0\.0\.1:\d+\/ws/);
      assert.equal(handshake.status, 101);
      const extensions = Object.entries(handshake.headers)
        .find(([k]) => k.toLowerCase() === 'sec-websocket-extensions')?.[1] ?? '';
      assert.match(extensions, /^permessage-deflate/, `negotiated: ${extensions}`);
      tabs.push({ page, context, errors, name });
    }
    const room = `tls${Date.now()}`;
    for (const { page, name } of tabs) {
      await page.fill('#join-name', name);
      await page.fill('#join-room', room);
      await page.click('#join-button');
      await page.locator('#chat-input').waitFor();
    }
    // Longer than the compression threshold both ways: Chromium compresses what it sends
    // and inflates what the server compressed.
    const long = `${'the quick brown fox jumps over the lazy dog '.repeat(12)}end`;
    await say(tabs[0].page, long);
    await tabs[1].page.locator('#messages .text', { hasText: 'lazy dog end' }).waitFor({ timeout: 5_000 });
    assert.deepEqual(await messages(tabs[1].page), [long]);
    await say(tabs[1].page, `${long}!`);
    await tabs[0].page.locator('#messages .text', { hasText: 'lazy dog end!' }).waitFor({ timeout: 5_000 });
    for (const tab of tabs) {
      assert.deepEqual(tab.errors, []);
      await tab.context.close();
    }
  } finally {
    await trusting.close();
    await stopServer(tls);
  }
});
