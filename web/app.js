// app.js: the demo page. Reads the model (GET /v1/model) to fill the form,
// runs one job at a time (POST /jobs, its events, GET /jobs/{id}/image),
// draws the job's expert routing beside the server-wide one (GET /stats),
// the routing panel by class and noise level (GET /stats/routing, see
// routing.js), and keeps this visit's results in a gallery. No framework,
// no build step.

import { ApiError, apiKey, getJSON, request, watchJob } from './api.js';
import { ClassPicker } from './classpicker.js';
import { drawHeatmap, drawLegend, maxShare, shares } from './heatmap.js';
import { drawRouting, fillLayers } from './routing.js';

const $ = (id) => document.getElementById(id);
const form = $('gen-form');
const fields = ['seed', 'steps', 'cfg_scale', 'sampler', 'num_images'];
const STATS_EVERY_MS = 2000;

const state = {
  model: null,
  job: null,          // the running job: {id, stop, t0, settings, timer}
  shown: null,        // the gallery entry on display
  serverCounts: null, // (L, E) from /stats
  samples: [],        // recent /stats and /metrics readings, for throughput
  stats: null,
  routing: null,      // the last GET /stats/routing
};

const picker = new ClassPicker($('class-input'), $('class-list'));

// ---- messages --------------------------------------------------------------

function say(text) {
  $('status').textContent = text;
}

function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
  for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
}

// Shows an error; a 400 naming a form field marks and focuses that field.
function showError(err) {
  const box = $('error');
  let text = err.message;
  if (err instanceof ApiError) {
    if (err.status === 429) {
      text = `The server is busy: ${err.message}`;
      if (err.retryAfter != null) text += ` (try again in ${err.retryAfter} s)`;
      holdGenerate(err.retryAfter || 1);
    } else if (err.status === 401) {
      text = 'This server needs an API key: enter it below.';
      askKey();
    } else if (err.status === 503 && err.type === 'loading') {
      text = 'The model is still loading: try again in a moment.';
    } else if (err.status === 400) {
      const m = /^(class_label|seed|steps|cfg_scale|sampler|num_images):/.exec(err.message);
      const el = m && (m[1] === 'class_label' ? $('class-input') : $(m[1]));
      if (el) {
        el.setAttribute('aria-invalid', 'true');
        el.focus();
      }
    }
  }
  box.textContent = text;
  box.hidden = false;
}

// Keeps Generate disabled for s seconds, counting down on the button.
function holdGenerate(s) {
  const btn = $('generate');
  const end = Date.now() + s * 1000;
  const tick = () => {
    const left = Math.ceil((end - Date.now()) / 1000);
    if (left > 0 && !state.job) {
      btn.disabled = true;
      btn.textContent = `Generate (${left})`;
      setTimeout(tick, 250);
    } else {
      btn.textContent = 'Generate';
      btn.disabled = !!state.job || !state.model;
    }
  };
  tick();
}

// ---- API key ---------------------------------------------------------------

function askKey() {
  $('key-form').hidden = false;
  $('api-key').value = apiKey.get();
  $('api-key').focus();
}

$('key-form').addEventListener('submit', (e) => {
  e.preventDefault();
  apiKey.set($('api-key').value.trim());
  $('key-form').hidden = true;
  clearError();
  if (!state.model) loadModel();
  refreshStats();
  refreshRouting();
});

$('key-forget').addEventListener('click', () => {
  apiKey.set('');
  $('api-key').value = '';
  say('The stored API key was removed.');
});

// ---- the model and the form -------------------------------------------------

function fmtCount(n) {
  return n >= 1e9 ? `${(n / 1e9).toFixed(2)} B` : n >= 1e6 ? `${(n / 1e6).toFixed(1)} M`
    : n >= 1e3 ? `${(n / 1e3).toFixed(1)} k` : String(n);
}

async function loadModel() {
  try {
    const m = await getJSON('/v1/model');
    state.model = m;
    setupForm(m);
    const c = m.config, name = String(m.model || '').split('/').filter(Boolean).pop() || 'model';
    $('model-line').textContent = `${name} · ${c.depth} MoE layers × ${c.num_experts} experts `
      + `(top-${c.num_experts_per_tok}) · ${fmtCount(m.parameters.total)} parameters, `
      + `${fmtCount(m.parameters.active_per_token)} active · ${m.image.width}×${m.image.height} images`;
    $('even-share').textContent = `${(100 / c.num_experts).toFixed(1)}%`;
    $('generate').disabled = !!state.job;
  } catch (err) {
    const retry = err.status === 401 ? 0 : err.status === 503 ? 1000 : 3000;
    $('model-line').textContent = err.status === 503 ? 'The model is loading…'
      : err.status === 401 ? 'This server needs an API key.' : `Cannot read the model: ${err.message}`;
    if (err.status === 401) askKey();
    if (retry) setTimeout(loadModel, retry);
  }
}

function setupForm(m) {
  const d = m.sampling_defaults, lim = m.limits;
  picker.setClasses(m.classes);
  if (picker.selected < 0) picker.set(Math.floor(Math.random() * m.classes.length));
  $('steps').max = lim.max_steps;
  $('steps').value = d.steps;
  $('cfg_scale').min = lim.cfg_scale_min;
  $('cfg_scale').max = lim.cfg_scale_max;
  $('cfg_scale').value = d.cfg_scale;
  $('num_images').max = lim.max_images;
  // the engine's sampler table (GET /v1/model), only those this model's prediction fits
  const names = (m.samplers || []).filter((s) => s.supported).map((s) => s.name);
  if (!names.includes(d.sampler)) names.unshift(d.sampler);
  const sel = $('sampler');
  sel.replaceChildren(...names.map((s) => new Option(s, s, s === d.sampler, s === d.sampler)));
  samplerHint();
}

// What the server adds to the form's fields (GET /v1/model sampling_defaults):
// the model's spacing goes with its own sampler only (another one runs its
// own); the guidance interval and the cache stay whatever the sampler.
function samplerHint() {
  const d = state.model && state.model.sampling_defaults;
  if (!d) return;
  const parts = [];
  if ($('sampler').value === d.sampler && d.spacing !== 'default') parts.push(`${d.spacing} spacing`);
  const [lo, hi] = d.cfg_interval || [0, 1];
  if (lo > 0 || hi < 1) parts.push(`guidance at noise levels ${lo}–${hi}`);
  if (d.cache && d.cache.mode !== 'off') parts.push(`step cache ${d.cache.mode}`);
  $('sampler-hint').textContent = parts.length ? `With the model's ${parts.join(', ')}.` : '';
}

$('sampler').addEventListener('change', samplerHint);

$('dice').addEventListener('click', () => {
  $('seed').value = crypto.getRandomValues(new Uint32Array(1))[0];
});

// The request body from the form; empty fields are left to the server.
function readForm() {
  const body = { class_label: picker.value };
  for (const f of fields) {
    const el = $(f);
    if (el.validity && el.validity.badInput) throw new Error(`${el.labels[0].textContent}: not a number`);
    if (el.value === '') continue;
    body[f] = el.type === 'number' ? Number(el.value) : el.value;
  }
  if (body.class_label === null) throw new Error('Class: pick a class from the list.');
  return body;
}

function restoreForm(p) {
  picker.set(p.class_label);
  for (const f of fields) if (p[f] !== undefined) $(f).value = p[f];
  samplerHint();
}

// ---- running a job ----------------------------------------------------------

function note(text) {
  $('job-note').textContent = text || '';
  $('job-note').hidden = !text;
}

function setRunning(on) {
  if (on) note('');
  $('generate').disabled = on || !state.model;
  $('cancel').hidden = !on;
  $('progress-box').hidden = !on;
  $('result-card').setAttribute('aria-busy', String(on));
}

function progress(text, frac) {
  const p = $('progress');
  if (frac == null) p.removeAttribute('value'); // indeterminate
  else p.value = frac;
  state.job.phase = text;
  paintProgress();
}

function paintProgress() {
  const j = state.job;
  if (j) $('progress-text').textContent = `${j.phase} · ${((performance.now() - j.t0) / 1000).toFixed(1)} s`;
}

form.addEventListener('submit', async (e) => {
  e.preventDefault();
  if (state.job || !state.model) return;
  clearError();
  let body;
  try {
    body = readForm();
  } catch (err) {
    showError(err);
    return;
  }
  const job = { t0: performance.now(), stop: null, phase: '' };
  state.job = job;
  job.timer = setInterval(paintProgress, 100);
  setRunning(true);
  progress('Submitting', null);
  try {
    const st = await getJSON('/jobs', { method: 'POST', json: body });
    job.id = st.id;
    job.params = st.params;
    onEvent(st.status, st);
    if (state.job === job && (st.status === 'queued' || st.status === 'running')) {
      job.stop = watchJob(st.id, onEvent);
    }
  } catch (err) {
    endJob();
    showError(err);
  }
});

function onEvent(type, d) {
  const job = state.job;
  if (!job) return;
  switch (type) {
  case 'queued':
    progress(`Queued, position ${d.queue_position}`, null);
    say(`Queued, position ${d.queue_position}`);
    break;
  case 'running':
    progress('Starting', 0);
    say('Generating');
    break;
  case 'step':
    if (d.steps) progress(`Step ${d.step} of ${d.steps}`, d.step / d.steps);
    break;
  case 'done':
    progress('Fetching the image', 1);
    finish(job, d).catch((err) => {
      endJob();
      showError(err);
    });
    break;
  case 'cancelled':
    endJob();
    say('Cancelled');
    note(`Cancelled at step ${d.step || 0} of ${d.steps || '?'}.`);
    break;
  case 'failed':
    endJob();
    showError(d.apiError || new Error(`The job failed: ${d.error || 'unknown error'}`));
    break;
  default:
  }
}

function endJob() {
  const job = state.job;
  if (!job) return;
  if (job.stop) job.stop();
  clearInterval(job.timer);
  state.job = null;
  setRunning(false);
}

async function finish(job, st) {
  const id = encodeURIComponent(job.id);
  const blob = await (await request(`/jobs/${id}/image`)).blob();
  // the routing counts come with the finished job's status document
  let experts = st.experts;
  if (!experts) experts = (await getJSON(`/jobs/${id}`)).experts || null;
  if (state.job !== job) return;
  const entry = {
    url: URL.createObjectURL(blob),
    params: st.params || job.params,
    timings: st.timings,
    experts,
  };
  endJob();
  addToGallery(entry);
  show(entry);
  say(`Done: ${caption(entry)}`);
}

$('cancel').addEventListener('click', cancel);
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && state.job) cancel();
});

async function cancel() {
  const job = state.job;
  if (!job || !job.id || job.cancelling) return;
  job.cancelling = true;
  progress('Cancelling', null);
  try {
    await request(`/jobs/${encodeURIComponent(job.id)}`, { method: 'DELETE' });
  } catch (err) {
    if (err.status !== 409) showError(err); // 409: it ended meanwhile
  }
}

// ---- results and gallery ----------------------------------------------------

function caption(e) {
  const p = e.params, name = picker.label(p.class_label) || p.class_name || `class ${p.class_label}`;
  let s = `${name} · seed ${p.seed} · ${p.sampler} ${p.steps} steps · guidance ${p.cfg_scale}`;
  if (p.num_images > 1) s += ` · ${p.num_images} images`;
  return s;
}

function slug(s) {
  return String(s).toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '') || 'image';
}

// Shows a result: scaled up by a whole factor so pixels stay crisp.
function show(entry) {
  state.shown = entry;
  const img = $('result-img');
  img.onload = () => sizeImage();
  img.src = entry.url;
  img.alt = `Generated image: ${caption(entry)}`;
  img.hidden = false;
  const t = entry.timings;
  $('result-caption').textContent = caption(entry)
    + (t ? ` · ${(t.total_ms / 1000).toFixed(1)} s (${(t.queue_ms / 1000).toFixed(1)} s queued)` : '');
  const a = $('download');
  a.href = entry.url;
  a.download = `ditmoe-${slug(picker.label(entry.params.class_label))}-seed${entry.params.seed}.png`;
  a.hidden = false;
  for (const b of $('gallery').querySelectorAll('button')) {
    b.setAttribute('aria-current', String(b.entry === entry));
  }
  drawHeatmaps();
}

function sizeImage() {
  const img = $('result-img');
  if (!img.naturalWidth) return;
  const room = Math.min(img.parentElement.clientWidth || 360, 360);
  const k = Math.max(1, Math.floor(room / Math.max(img.naturalWidth, img.naturalHeight)));
  img.style.width = `${img.naturalWidth * k}px`;
}
window.addEventListener('resize', sizeImage);

function addToGallery(entry) {
  const li = document.createElement('li');
  const b = li.appendChild(document.createElement('button'));
  b.type = 'button';
  b.entry = entry;
  b.title = `${caption(entry)} (select to restore these settings)`;
  const img = b.appendChild(document.createElement('img'));
  img.src = entry.url;
  img.alt = '';
  const cap = b.appendChild(document.createElement('span'));
  cap.textContent = `${picker.label(entry.params.class_label)} · ${entry.params.seed}`;
  b.setAttribute('aria-label', `${caption(entry)}: restore these settings`);
  b.addEventListener('click', () => {
    restoreForm(entry.params);
    show(entry);
    say(`Settings restored: ${caption(entry)}`);
  });
  $('gallery').prepend(li);
  $('gallery-empty').hidden = true;
}

// ---- experts and server stats -------------------------------------------------

function drawHeatmaps() {
  const req = state.shown && state.shown.experts;
  const srv = state.serverCounts;
  const max = maxShare(req && shares(req), srv && shares(srv)) || 1;
  if (req) drawHeatmap($('hm-request'), req, max, 'Experts used by this request, layers by experts');
  else if (state.shown) $('hm-request').innerHTML = '<p class="muted">The server did not report this request\'s routing.</p>';
  if (srv) drawHeatmap($('hm-server'), srv, max, 'Experts used server-wide, layers by experts');
  if (req || srv) drawLegend($('legend'), max, (req || srv)[0].length);
}

function throughput(now) {
  const s = state.samples;
  const old = s.find((x) => now.t - x.t <= 30000) || s[0];
  if (!old || now.t - old.t < 1000) return null;
  const dt = (now.t - old.t) / 1000;
  return {
    steps: (now.steps - old.steps) / dt,
    images: now.images != null && old.images != null ? ((now.images - old.images) / dt) * 60 : null,
  };
}

async function refreshStats() {
  if (document.hidden) return;
  try {
    const st = await getJSON('/stats');
    let images = null;
    try {
      const text = await (await request('/metrics')).text();
      const m = /^ditmoe_images_total (\d+(?:\.\d+)?)/m.exec(text);
      if (m) images = Number(m[1]);
    } catch { /* metrics are optional */ }
    const range = $('stats-range').value;
    state.serverCounts = st.layers.map((l) => l.experts.map((e) => (range === 'window' ? e.tokens_window : e.tokens)));
    $('stats-range').options[1].textContent = `last ${st.window_s} s`;
    const now = { t: performance.now(), steps: st.steps, images };
    const tp = throughput(now);
    state.samples = state.samples.filter((x) => now.t - x.t <= 30000).concat([now]);
    $('st-status').textContent = 'ready';
    $('st-queue').textContent = `${st.queue.depth} waiting (of ${st.queue.capacity})`;
    $('st-running').textContent = `${st.queue.running} job${st.queue.running === 1 ? '' : 's'}`;
    $('st-throughput').textContent = tp
      ? `${tp.steps.toFixed(1)} steps/s${tp.images != null ? ` · ${tp.images.toFixed(1)} images/min` : ''}`
      : 'measuring…';
    $('st-batch').textContent = st.steps ? `${(st.rows / st.steps).toFixed(1)} rows/step` : '—';
    $('st-images').textContent = images != null ? `${images} since start` : '—';
    drawHeatmaps();
  } catch (err) {
    $('st-status').textContent = err.status === 401 ? 'needs an API key'
      : err.status === 503 ? 'loading' : err.status === 0 ? 'unreachable' : `error ${err.status}`;
  }
}

// ---- the routing panel ----------------------------------------------------------

function drawRoutingPanel() {
  const period = $('rt-period').value, rep = state.routing && state.routing[period];
  if (!rep) return;
  fillLayers($('rt-layer'), rep);
  $('rt-period').options[1].textContent = `last ${state.routing.window_s} s`;
  drawRouting({ cls: $('hm-class'), noise: $('hm-noise'), legend: $('rt-legend'), sentence: $('rt-sentence') },
    rep, Number($('rt-layer').value), period === 'window' ? `in the last ${state.routing.window_s} s` : 'since the server started');
}

async function refreshRouting() {
  if (document.hidden) return;
  try {
    state.routing = await getJSON('/stats/routing');
    drawRoutingPanel();
  } catch (err) {
    if (err.status !== 401 && err.status !== 503) $('rt-sentence').textContent = `Cannot read the routing statistics: ${err.message}`;
  }
}

$('rt-layer').addEventListener('change', drawRoutingPanel);
$('rt-period').addEventListener('change', drawRoutingPanel);
document.addEventListener('visibilitychange', refreshRouting);
setInterval(refreshRouting, STATS_EVERY_MS);

$('stats-range').addEventListener('change', refreshStats);
document.addEventListener('visibilitychange', refreshStats);
setInterval(refreshStats, STATS_EVERY_MS);

loadModel();
refreshStats();
refreshRouting();
