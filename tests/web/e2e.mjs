// e2e.mjs SERVER OUT_DIR SOURCE_ROOT: the demo page, end to end.
//
// Starts real ditmoe-server processes on free loopback ports (the bundled
// models/fashion-mnist, else a small random model made by make_model.py),
// drives Debian's Chromium headless through playwright-core, and checks
// what a person would: pick a class by typing, generate with the keyboard,
// the image at the model's size, the routing heatmaps, the routing panel
// (class and noise-level heatmaps of each layer and period), a 400 naming the
// field, a 429 with its retry time, cancel, restoring from the gallery, an
// API-key server (key prompt, then polling instead of EventSource), and
// that the page fits a phone-width screen. Screenshots go to OUT_DIR.
// Exit 77 (meson: skipped) when a tool it needs is missing.

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const [SERVER, OUT, ROOT] = process.argv.slice(2);
if (!SERVER || !OUT || !ROOT) {
  console.error('usage: e2e.mjs SERVER OUT_DIR SOURCE_ROOT');
  process.exit(2);
}
const CHROMIUM = '/usr/bin/chromium';
const PYTHON = '/usr/bin/python3';
const TIMEOUT = 120_000; // per wait: the machine is shared with a training run

const cleanup = [];
function skip(why) {
  console.log(`SKIP: ${why}`);
  process.exit(77);
}
function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(`ok - ${what}`);
}

// ---- setup ---------------------------------------------------------------------

// playwright-core from package-lock.json, installed into tests/web/node_modules.
function loadPlaywright() {
  const lock = JSON.parse(readFileSync(path.join(HERE, 'package-lock.json'), 'utf8'));
  const want = lock.packages['node_modules/playwright-core'].version;
  const have = path.join(HERE, 'node_modules', 'playwright-core', 'package.json');
  if (!existsSync(have) || JSON.parse(readFileSync(have, 'utf8')).version !== want) {
    console.log(`installing playwright-core ${want} (npm ci)`);
    const r = spawnSync('npm', ['ci', '--no-audit', '--no-fund', '--ignore-scripts'],
      { cwd: HERE, stdio: 'inherit' });
    if (r.error || r.status !== 0) skip('npm ci failed (no npm, or the registry cannot be reached)');
  }
  return createRequire(path.join(HERE, 'package.json'))('playwright-core');
}

function findModel(scratch) {
  const bundled = path.join(ROOT, 'models', 'fashion-mnist');
  if (existsSync(path.join(bundled, 'config.json'))) return bundled;
  if (!existsSync(PYTHON)) skip('no models/fashion-mnist and no python3 to make a model');
  const dir = path.join(scratch, 'model');
  const r = spawnSync(PYTHON, [path.join(HERE, 'make_model.py'), dir], { stdio: 'inherit' });
  if (r.status !== 0) skip('make_model.py failed (python3-torch missing?)');
  return dir;
}

// Starts the server on a free port; resolves to its base URL once /ready.
async function startServer(model, extra = []) {
  const args = ['--model', model, '--listen', '127.0.0.1', '--port', '0', '--threads', '1',
    '--web-root', path.join(ROOT, 'web'), ...extra];
  const proc = spawn(SERVER, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  cleanup.push(() => proc.kill('SIGTERM'));
  let log = '';
  proc.stderr.on('data', (d) => { log += d; });
  const base = await new Promise((resolve, reject) => {
    let out = '';
    proc.stdout.on('data', (d) => {
      out += d;
      const m = /listening on (http:\/\/[^\s]+)/.exec(out);
      if (m) resolve(m[1].replace(/\/$/, ''));
    });
    proc.on('exit', (code) => reject(new Error(`ditmoe-server exited (${code}):\n${log}`)));
    setTimeout(() => reject(new Error(`ditmoe-server did not start:\n${log}`)), TIMEOUT);
  });
  for (let t0 = Date.now(); ;) {
    try {
      if ((await fetch(`${base}/ready`)).ok) break;
    } catch { /* not yet */ }
    if (Date.now() - t0 > TIMEOUT) throw new Error(`ditmoe-server never ready:\n${log}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  console.log(`server ${args.join(' ')} at ${base}`);
  return base;
}

// A page that fails the test on script errors or requests to other origins.
let lastPage = null; // screenshot on failure

async function openPage(ctx, base) {
  const page = await ctx.newPage();
  lastPage = page;
  page.setDefaultTimeout(TIMEOUT);
  page.errors = [];
  page.requests = [];
  page.on('pageerror', (e) => page.errors.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    // 4xx answers are logged by Chromium itself; the test provokes some
    if (m.type() === 'error' && !/status of 4\d\d/.test(m.text())) page.errors.push(m.text());
  });
  page.on('request', (r) => {
    page.requests.push({ url: r.url(), method: r.method(), headers: r.headers() });
    if (!r.url().startsWith(base) && !r.url().startsWith('blob:') && !r.url().startsWith('data:')) {
      page.errors.push(`request outside the server: ${r.url()}`);
    }
  });
  await page.goto(`${base}/`);
  return page;
}

// ---- the checks --------------------------------------------------------------------

async function pickClass(page, name) {
  await page.focus('#class-input');
  await page.keyboard.type(name.slice(0, 4));
  await page.waitForSelector('#class-list:not([hidden]) [role=option]');
  const opts = await page.$$eval('#class-list [role=option]', (els) => els.map((e) => e.firstChild.textContent));
  check(opts.includes(name), `typing "${name.slice(0, 4)}" lists ${name}`);
  while ((await page.$eval('[role=option][aria-selected=true]', (e) => e.firstChild.textContent)) !== name) {
    await page.keyboard.press('ArrowDown');
  }
  await page.keyboard.press('Enter');
  check(await page.$eval('#class-list', (e) => e.hidden), 'Enter closes the list');
  check(await page.inputValue('#class-input') === name, `class input shows ${name}`);
}

async function setField(page, id, value) {
  await page.fill(`#${id}`, String(value));
}

async function waitIdle(page) {
  await page.waitForFunction(() => document.getElementById('cancel').hidden);
}

async function generateAndCheck(page, model, cls, seed) {
  await pickClass(page, cls);
  await setField(page, 'seed', seed);
  await setField(page, 'steps', 8);
  await setField(page, 'num_images', 1);
  await page.focus('#steps');
  await page.keyboard.press('Enter'); // the keyboard submits the form
  await page.waitForFunction(() => {
    const img = document.getElementById('result-img');
    return !img.hidden && img.complete && img.naturalWidth > 0;
  });
  await waitIdle(page);
  const img = await page.$eval('#result-img', (e) => ({
    w: e.naturalWidth, h: e.naturalHeight, shown: e.getBoundingClientRect().width,
    rendering: getComputedStyle(e).imageRendering, alt: e.alt,
  }));
  check(img.w === model.image.width && img.h === model.image.height,
    `image decoded at ${img.w}x${img.h} (model: ${model.image.width}x${model.image.height})`);
  check(img.shown >= 4 * img.w && img.shown % img.w === 0, `shown ${img.shown}px wide, a whole multiple`);
  check(img.rendering === 'pixelated', 'scaled with image-rendering: pixelated');
  check(img.alt.includes(cls) && img.alt.includes(`seed ${seed}`), `alt text names the class and seed: ${img.alt}`);
  const dl = await page.$eval('#download', (a) => ({ href: a.href, name: a.download, hidden: a.hidden }));
  check(!dl.hidden && dl.href.startsWith('blob:') && dl.name.endsWith('.png'), `download link ${dl.name}`);
  return img;
}

async function checkHeatmap(page, sel, model, what) {
  const L = model.config.depth, E = model.config.num_experts;
  await page.waitForFunction(([s, n]) => {
    const cells = document.querySelectorAll(`${s} td`);
    return /did not report/.test(document.querySelector(s).textContent)
      || (cells.length === n && [...cells].some((c) => Number(c.dataset.count) > 0));
  }, [sel, L * E]);
  check(!/did not report/.test(await page.textContent(sel)),
    `${what}: the finished job's status (GET /jobs/{id} or its "done" event) has "experts"`);
  const cells = await page.$$eval(`${sel} td`, (els) => els.map((e) => Number(e.dataset.count)));
  const rows = await page.$$eval(`${sel} tbody tr`, (els) => els.length);
  check(rows === L && cells.length === L * E, `${what} heatmap has ${L} layers x ${E} experts`);
  check(cells.filter((c) => c > 0).length >= E / 4, `${what} heatmap has non-zero counts`);
  return cells;
}

const sum = (a) => a.reduce((x, y) => x + y, 0);

// The routing panel after jobs of `classes` (labels), `steps` Euler steps
// each: for the first and last layer and both periods, a class × expert
// heatmap with exactly those classes, a noise-level × expert one with a
// row per noise bucket the steps visited, both counting the same tokens as
// GET /stats/routing, and the sentence about that layer.
async function checkRouting(page, base, model, classes, steps) {
  const L = model.config.depth, E = model.config.num_experts;
  const visited = new Set(Array.from({ length: steps },
    (_, i) => Math.min(9, Math.floor(((steps - i) / steps) * 10 + 1e-6)))).size;
  const names = [...classes].sort((a, b) => a - b).map((k) => model.classes[k]);
  await page.waitForFunction((n) => document.querySelectorAll('#hm-class tbody tr').length === n,
    classes.length);
  check(await page.$$eval('#rt-layer option', (o) => o.length) === L, `the layer menu lists ${L} layers`);
  const rep = (await (await fetch(`${base}/stats/routing`)).json()).since_start;
  // the panel polls: wait until it shows what the server has now (every layer counts the same)
  await page.waitForFunction((n) => [...document.querySelectorAll('#hm-class td')]
    .reduce((a, td) => a + Number(td.dataset.count), 0) === n, rep.tokens);
  for (const layer of [0, L - 1]) {
    await page.selectOption('#rt-layer', String(layer));
    for (const period of ['since_start', 'window']) {
      await page.selectOption('#rt-period', period);
      const what = `routing panel, layer ${layer}, ${period}`;
      const rows = await page.$$eval('#hm-class tbody th', (t) => t.map((x) => x.textContent));
      check(JSON.stringify(rows) === JSON.stringify(names), `${what}: class rows ${rows} are the classes asked for`);
      const cls = await page.$$eval('#hm-class td', (t) => t.map((x) => Number(x.dataset.count)));
      const noise = await page.$$eval('#hm-noise td', (t) => t.map((x) => Number(x.dataset.count)));
      check(cls.length === classes.length * E && noise.length === visited * E,
        `${what}: ${classes.length} class rows and ${visited} noise-level rows of ${E} experts`);
      check(sum(cls) === rep.layers[layer].tokens && sum(noise) === sum(cls),
        `${what}: both heatmaps count the server's ${rep.layers[layer].tokens} tokens`);
      check((await page.getAttribute('#hm-class table', 'aria-label')).startsWith(`Layer ${layer}:`),
        `${what}: the class heatmap is of layer ${layer}`);
      const text = await page.textContent('#rt-sentence');
      check(new RegExp(`^In layer ${layer}, knowing the class tells [\\d.]+ of the expert choice's [\\d.]+ bits`).test(text),
        `${what}: the sentence "${text}"`);
    }
  }
  check(await page.$$eval('#rt-legend .legend-bar', (e) => e.length) === 1, 'the routing panel has a colour legend');
}

// Many classes (an ImageNet server): the class heatmap keeps the 24 most
// requested, in label order, and says so. The report is the server's own
// with 30 made-up classes, class k having k + 1 tokens.
async function checkManyClasses(page, base) {
  const doc = await (await fetch(`${base}/stats/routing`)).json();
  for (const rep of [doc.since_start, doc.window]) {
    const row = rep.layers.map((l) => l.class_counts[0]);
    rep.classes = Array.from({ length: 30 }, (_, k) => ({ ...rep.classes[0], class: k, name: `c${k}`, tokens: k + 1 }));
    rep.layers.forEach((l, i) => { l.class_counts = rep.classes.map(() => row[i]); });
  }
  await page.route('**/stats/routing', (route) => route.fulfill({
    status: 200, contentType: 'application/json', body: JSON.stringify(doc) }));
  await page.waitForFunction(() => document.querySelectorAll('#hm-class tbody tr').length === 24);
  const rows = await page.$$eval('#hm-class tbody th', (t) => t.map((x) => x.textContent));
  const want = Array.from({ length: 24 }, (_, i) => `c${i + 6}`);
  check(JSON.stringify(rows) === JSON.stringify(want), `30 classes: the 24 most requested, in label order (${rows})`);
  check(/the 24 most requested of 30/.test(await page.getAttribute('#hm-class table', 'aria-label')),
    '30 classes: the heatmap says it shows 24 of them');
  await page.unroute('**/stats/routing');
}

async function mainFlow(pw, browser, scratch, model) {
  const base = await startServer(model);
  const info = await (await fetch(`${base}/v1/model`)).json();
  const names = info.classes;
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await openPage(ctx, base);
  await page.waitForSelector('#generate:not([disabled])');
  check((await page.textContent('#model-line')).includes(`${info.config.num_experts} experts`),
    'the header describes the model');

  // generate, by keyboard, with the SSE progress stream
  const cls = names[7] || names[names.length - 1];
  await generateAndCheck(page, info, cls, 7);
  check(page.requests.some((r) => /\/jobs\/[^/]+\/events$/.test(r.url)), 'progress came from /jobs/{id}/events');
  const req = await checkHeatmap(page, '#hm-request', info, 'request');
  const perLayer = req.slice(0, info.config.num_experts).reduce((a, b) => a + b, 0);
  const T = (info.config.input_size / info.config.patch_size) ** 2;
  check(perLayer % (T * info.config.num_experts_per_tok) === 0,
    `a layer's counts are whole images of ${T} tokens x top-${info.config.num_experts_per_tok}`);
  await checkHeatmap(page, '#hm-server', info, 'server-wide');
  check(await page.$$eval('#legend .legend-bar', (e) => e.length) === 1, 'the heatmaps have a colour legend');
  await checkRouting(page, base, info, [names.indexOf(cls)], 8);
  await page.waitForFunction(() => /steps\/s/.test(document.getElementById('st-throughput').textContent));
  check(/waiting/.test(await page.textContent('#st-queue')), 'queue depth shown');
  await page.evaluate(() => document.activeElement.blur());
  await page.screenshot({ path: path.join(OUT, 'demo-desktop.png'), fullPage: true });

  // a second result, then restore the first from the gallery
  await generateAndCheck(page, info, names[1], 3);
  check(await page.$$eval('#gallery li', (e) => e.length) === 2, 'gallery holds both results');
  await checkRouting(page, base, info, [names.indexOf(cls), 1], 8);
  await checkManyClasses(page, base);
  await page.click('#gallery li:last-child button');
  check(await page.inputValue('#seed') === '7' && await page.inputValue('#class-input') === cls,
    'selecting a gallery item restores its settings');

  // 400: steps out of range, through the form
  await setField(page, 'steps', info.limits.max_steps + 1);
  await page.click('#generate');
  await page.waitForSelector('#error:not([hidden])');
  const err = await page.textContent('#error');
  check(/steps/.test(err) && /range/.test(err), `400 message names the field: "${err}"`);
  check(await page.getAttribute('#steps', 'aria-invalid') === 'true', 'the steps field is marked invalid');
  check(await page.evaluate(() => document.activeElement.id) === 'steps', 'focus moves to the field');

  // 429: the queue is full (answered by the test: filling a real queue is a timing race)
  await page.route('**/jobs', (route) => route.fulfill({
    status: 429, contentType: 'application/json', headers: { 'Retry-After': '3' },
    body: JSON.stringify({ error: { code: 429, type: 'queue_full', message: 'the queue is full (64 jobs): retry later' } }),
  }));
  await setField(page, 'steps', 8);
  await page.click('#generate');
  await page.waitForFunction(() => /busy/.test(document.getElementById('error').textContent));
  const busy = await page.textContent('#error');
  check(/3 s/.test(busy), `429 message gives the retry time: "${busy}"`);
  check(await page.$eval('#generate', (b) => b.disabled && /\(\d\)/.test(b.textContent)),
    'Generate waits out Retry-After');
  await page.unroute('**/jobs');
  await page.waitForSelector('#generate:not([disabled])');

  // cancel a long job once it is running
  // (the most steps with 4 images: many seconds on the smallest model, and
  // no step is far from a boundary, where a running job stops)
  await setField(page, 'steps', info.limits.max_steps);
  await setField(page, 'num_images', 4);
  await page.click('#generate');
  await page.waitForFunction((n) => new RegExp(`Step \\d+ of ${n}`).test(
    document.getElementById('progress-text').textContent), info.limits.max_steps);
  await page.keyboard.press('Escape');
  await page.waitForFunction(() => /^Cancelled at step \d+ of \d+/.test(document.getElementById('job-note').textContent));
  await waitIdle(page);
  check(page.requests.some((r) => r.method === 'DELETE' && /\/jobs\/[^/]+$/.test(r.url)),
    'Escape cancels a running job (DELETE /jobs/{id}, then its "cancelled" event)');

  // phone width: one column, nothing wider than the screen
  await setField(page, 'steps', 8);
  await setField(page, 'num_images', 1);
  await page.setViewportSize({ width: 390, height: 844 });
  await page.evaluate(() => window.scrollTo(0, 0));
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth);
  check(overflow <= 390, `phone width: page is ${overflow}px wide`);
  await page.screenshot({ path: path.join(OUT, 'demo-phone.png'), fullPage: true });
  check(page.errors.length === 0, `no script errors or outside requests ${JSON.stringify(page.errors)}`);
  await ctx.close();
}

async function keyFlow(browser, model) {
  const KEY = 'test-key-5b1f';
  const base = await startServer(model, ['--api-key', KEY]);
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await openPage(ctx, base);
  await page.waitForSelector('#key-form:not([hidden])');
  check(await page.evaluate(() => document.activeElement.id) === 'api-key', '401: the key prompt has focus');
  await page.keyboard.type(KEY);
  await page.keyboard.press('Enter');
  await page.waitForSelector('#generate:not([disabled])');
  check(await page.evaluate(() => localStorage.getItem('ditmoe.apiKey')) === KEY, 'key stored in localStorage');
  const info = await (await fetch(`${base}/v1/model`, { headers: { Authorization: `Bearer ${KEY}` } })).json();
  await generateAndCheck(page, info, info.classes[0], 11);
  const events = page.requests.filter((r) => /\/events$/.test(r.url));
  const polls = page.requests.filter((r) => /\/jobs\/[^/]+$/.test(r.url) && r.method === 'GET');
  check(events.length === 0 && polls.length > 0, 'with a key the job is polled, not streamed');
  check(polls.every((r) => r.headers.authorization === `Bearer ${KEY}`), 'polls carry the key');
  await checkHeatmap(page, '#hm-request', info, 'request (key)');
  check(page.errors.length === 0, `no script errors ${JSON.stringify(page.errors)}`);
  await ctx.close();
}

async function main() {
  if (!existsSync(CHROMIUM)) skip(`${CHROMIUM} is not installed`);
  mkdirSync(OUT, { recursive: true });
  rmSync(path.join(OUT, 'failure.png'), { force: true });
  const scratch = mkdtempSync(path.join(OUT, 'e2e-'));
  cleanup.push(() => rmSync(scratch, { recursive: true, force: true }));
  const pw = loadPlaywright();
  const model = findModel(scratch);
  const browser = await pw.chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--no-first-run', '--disable-quic', '--disable-sync'],
  }); // launch() gives the browser a fresh temporary profile (user-data dir) and removes it

  cleanup.unshift(() => browser.close());
  await mainFlow(pw, browser, scratch, model);
  await keyFlow(browser, model);
  console.log(`screenshots: ${path.join(OUT, 'demo-desktop.png')}, ${path.join(OUT, 'demo-phone.png')}`);
}

let status = 0;
try {
  await main();
} catch (e) {
  console.error(e.stack || String(e));
  status = 1;
  if (lastPage && !lastPage.isClosed()) {
    await lastPage.screenshot({ path: path.join(OUT, 'failure.png'), fullPage: true }).catch(() => {});
    console.error(`page at failure: ${path.join(OUT, 'failure.png')}`);
  }
}
for (const f of cleanup) {
  try {
    await f();
  } catch { /* best effort */ }
}
process.exit(status);
