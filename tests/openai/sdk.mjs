// sdk.mjs SERVER MODEL_DIR: the official OpenAI Node SDK (npm `openai`, the
// version in package-lock.json; `npm ci` into tests/openai/node_modules when
// it is missing) against a real ditmoe-server's /v1 routes, as a user of
// that SDK would call OpenAI: images.generate (b64_json), models.list and
// models.retrieve, and the errors the SDK turns into its exception classes
// with e.status, e.type, e.param and e.code. MODEL_DIR is made with
// tests/server/make_model.py (PyTorch) when it does not exist yet. Exit 77
// (meson: skipped) when npm cannot install the SDK.

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const [SERVER, MODEL] = process.argv.slice(2);
if (!SERVER || !MODEL) {
  console.error('usage: sdk.mjs SERVER MODEL_DIR');
  process.exit(2);
}
const procs = [];
let failures = 0;
function check(cond, what) {
  console.log(`${cond ? 'ok  ' : 'FAIL'} ${what}`);
  if (!cond) failures++;
}

function loadSdk() {
  const lock = JSON.parse(readFileSync(path.join(HERE, 'package-lock.json'), 'utf8'));
  const want = lock.packages['node_modules/openai'].version;
  const have = path.join(HERE, 'node_modules', 'openai', 'package.json');
  if (!existsSync(have) || JSON.parse(readFileSync(have, 'utf8')).version !== want) {
    console.log(`installing openai ${want} (npm ci)`);
    const r = spawnSync('npm', ['ci', '--no-audit', '--no-fund', '--ignore-scripts'],
      { cwd: HERE, stdio: 'inherit' });
    if (r.error || r.status !== 0) {
      console.log('SKIP: npm ci failed (no npm, or the registry cannot be reached)');
      process.exit(77);
    }
  }
  return createRequire(path.join(HERE, 'package.json'))('openai');
}

// Starts the server on a free loopback port; resolves to its base URL.
function startServer(extra) {
  const proc = spawn(SERVER, ['--model', MODEL, '--listen', '127.0.0.1', '--port', '0',
    '--threads', '1', ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
  procs.push(proc);
  let log = '';
  proc.stderr.on('data', (d) => { log += d; });
  return new Promise((resolve, reject) => {
    let out = '';
    proc.stdout.on('data', (d) => {
      out += d;
      const m = /listening on (http:\/\/[^\s]+)/.exec(out);
      if (m) resolve(m[1]);
    });
    proc.on('exit', (code) => reject(new Error(`ditmoe-server exited (${code}):\n${log}`)));
  });
}

async function ready(base) {
  for (let i = 0; i < 600; i++) {
    try {
      if ((await fetch(`${base}/ready`)).status === 200) return;
    } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('server not ready');
}

// The SDK's exception for a call that must fail.
async function failure(call) {
  try {
    await call();
    return null;
  } catch (e) {
    return e;
  }
}

function makeModel() {
  if (existsSync(path.join(MODEL, 'config.json'))) return;
  const r = spawnSync('/usr/bin/python3', [path.join(HERE, '..', 'server', 'make_model.py'), MODEL],
    { stdio: 'inherit' });
  if (r.status !== 0) throw new Error('make_model.py failed');
}

async function main() {
  makeModel();
  const sdk = loadSdk();
  const OpenAI = sdk.default ?? sdk.OpenAI ?? sdk;
  const key = 'sk-ditmoe-test';
  const base = await startServer(['--api-key', key]);
  await ready(base);
  const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: key, maxRetries: 0 });
  const name = path.basename(MODEL);

  const img = await client.images.generate({
    prompt: 'Trouser', n: 2, size: '16x16', response_format: 'b64_json', model: name,
    seed: 7, steps: 4,
  });
  check(img.data?.length === 2 && img.data.every((d) => Buffer.from(d.b64_json, 'base64')
    .subarray(1, 4).toString() === 'PNG'), 'images.generate: two PNGs as b64_json');
  check(Number.isInteger(img.created) && img.data[0].revised_prompt === 'Trouser',
    `images.generate: created ${img.created}, revised_prompt ${img.data[0].revised_prompt}`);

  const list = [];
  for await (const m of client.models.list()) list.push(m);
  check(list.length === 1 && list[0].id === name && list[0].object === 'model',
    `models.list: ${JSON.stringify(list)}`);
  const one = await client.models.retrieve(name);
  check(one.id === name && one.owned_by === 'ditmoe', `models.retrieve: ${JSON.stringify(one)}`);

  let e = await failure(() => client.images.generate({ prompt: 'cat', size: '16x16' }));
  check(e instanceof OpenAI.BadRequestError && e.status === 400 && e.type ===
    'invalid_request_error' && e.param === 'prompt' && e.code === 'invalid_request' &&
    /cat/.test(e.message), `unknown class: BadRequestError, param prompt: ${e?.constructor?.name} ` +
    `${e?.status} ${e?.type} ${e?.param} ${e?.code} ${e?.message}`);
  e = await failure(() => client.images.generate({ prompt: 'Trouser', size: '1024x1024' }));
  check(e instanceof OpenAI.BadRequestError && e.param === 'size' && /16x16/.test(e.message),
    `wrong size: param size: ${e?.param} ${e?.message}`);
  e = await failure(() => client.images.generate({ prompt: 'Trouser', n: 99 }));
  check(e instanceof OpenAI.BadRequestError && e.param === 'n', `n too large: param ${e?.param}`);
  e = await failure(() => client.models.retrieve('gpt-image-1'));
  check(e instanceof OpenAI.NotFoundError && e.param === 'model',
    `unknown model: NotFoundError: ${e?.constructor?.name} ${e?.param}`);
  const wrong = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'sk-wrong', maxRetries: 0 });
  e = await failure(() => wrong.images.generate({ prompt: 'Trouser' }));
  check(e instanceof OpenAI.AuthenticationError && e.status === 401 &&
    e.type === 'authentication_error' && e.param === null,
    `wrong key: AuthenticationError: ${e?.constructor?.name} ${e?.type} ${e?.param}`);

  // a full queue: RateLimitError with rate_limit_error
  const small = await startServer(['--queue-capacity', '1', '--batching', 'false',
    '--max-jobs-per-client', '0']);
  await ready(small);
  const busy = new OpenAI({ baseURL: `${small}/v1`, apiKey: 'unused', maxRetries: 0 });
  const job = { method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ class_label: 1, steps: 1000, num_images: 16 }) };
  // Jobs until /jobs itself answers 429, so the queue is full right before
  // the SDK's call (two jobs were not always enough: the running one could
  // end first and let the queued one start). If the running job still ends
  // in that millisecond, the SDK's call is served: fill again, at most 3 times.
  const ids = [];
  for (let attempt = 0; attempt < 3; attempt++) {
    for (let n = 0, r = await fetch(`${small}/jobs`, job); r.status !== 429 && n < 10;
      n++, r = await fetch(`${small}/jobs`, job)) ids.push((await r.json()).id);
    e = await failure(() => busy.images.generate({ prompt: 'Trouser' }));
    if (e) break;
  }
  check(e instanceof OpenAI.RateLimitError && e.type === 'rate_limit_error' &&
    e.code === 'queue_full', `full queue: RateLimitError: ${e?.constructor?.name} ${e?.type} ${e?.code}`);
  for (const id of ids) await fetch(`${small}/jobs/${id}`, { method: 'DELETE' });
}

try {
  await main();
} catch (err) {
  console.log(`FAIL ${err.stack || err}`);
  failures++;
} finally {
  for (const p of procs) p.kill('SIGTERM');
}
console.log(failures ? `openai sdk: ${failures} failure(s)` : 'openai sdk: ok');
process.exit(failures ? 1 : 0);
