// routing.js: the routing panel (GET /stats/routing). For the chosen layer
// and period: which experts each class uses (class × expert), which each
// noise level uses (noise level × expert), and one sentence of how much
// knowing the class or the noise level tells about the expert chosen.
// Rows are shares of the row's own routing decisions, so a row per class
// that all look alike says the router ignores the class.

import { drawHeatmap, drawLegend, maxShare, shares } from './heatmap.js';

const MAX_CLASS_ROWS = 24; // an ImageNet server may have seen 1000 classes

const bits = (v) => (v == null ? '–' : v < 0.01 && v > 0 ? v.toPrecision(1) : v.toFixed(2));
const pct = (v) => `${+(v * 100).toFixed(1)}%`;

// "0.9–1" for bucket 9 of 10: the noise levels the row holds (1 = pure noise).
export function noiseLabel(b, n) {
  return `${+(b / n).toFixed(2)}–${+((b + 1) / n).toFixed(2)}`;
}

// The mean size of the classes' 90% expert sets in layer l.
function meanCover(rep, l) {
  const c = rep.classes;
  return c.length ? c.reduce((a, x) => a + x.cover90_size[l], 0) / c.length : null;
}

// One sentence a visitor understands, for layer l of a report.
export function sentence(rep, l, period) {
  const lay = rep.layers[l];
  if (!lay || !lay.tokens) return `No images counted ${period} yet: generate one.`;
  const cover = meanCover(rep, l);
  return `In layer ${l}, knowing the class tells ${bits(lay.mi_class_bits)} of the expert `
    + `choice's ${bits(lay.entropy_bits)} bits (${pct(lay.class_share)}), and knowing the noise `
    + `level tells ${bits(lay.mi_noise_bits)} bits (${pct(lay.noise_share)}). A cache holding 90% `
    + `of a class's tokens here would need ${cover.toFixed(1)} of the ${rep.num_experts} experts.`;
}

// Fills the layer <select> once the report says how many layers there are.
export function fillLayers(select, rep) {
  if (select.options.length === rep.num_layers) return;
  select.replaceChildren(...rep.layers.map((x) => new Option(`layer ${x.layer}`, x.layer)));
  const best = rep.layers.reduce((b, x) => ((x.mi_class_bits || 0) > (b.mi_class_bits || 0) ? x : b),
    rep.layers[0]);
  select.value = String(best.layer); // where the class tells most, to begin with
}

// Draws layer l of rep into els {cls, noise, legend, sentence}.
export function drawRouting(els, rep, l, period) {
  els.sentence.textContent = sentence(rep, l, period);
  const lay = rep.layers[l];
  if (!lay || !lay.tokens) {
    els.cls.innerHTML = '<p class="muted">No classes yet.</p>';
    els.noise.innerHTML = '<p class="muted">No steps yet.</p>';
    els.legend.replaceChildren();
    return;
  }
  const n = rep.noise_buckets;
  const noiseRows = lay.noise_counts.map((r, b) => ({ r, b })).reverse() // pure noise on top
    .filter((x) => x.r.some((v) => v > 0));
  // the most requested classes when there are many, still in label order
  const keep = rep.classes.map((c, i) => ({ c, i }))
    .sort((a, b) => b.c.tokens - a.c.tokens).slice(0, MAX_CLASS_ROWS).sort((a, b) => a.i - b.i);
  const clsRows = keep.map((x) => lay.class_counts[x.i]);
  const max = maxShare(shares(clsRows), shares(noiseRows.map((x) => x.r))) || 1;
  drawHeatmap(els.cls, clsRows, max, `Layer ${l}: experts used by each class`
    + (keep.length < rep.classes.length ? ` (the ${keep.length} most requested of ${rep.classes.length})` : ''),
    { head: 'class', names: keep.map((x) => x.c.name || String(x.c.class)) });
  drawHeatmap(els.noise, noiseRows.map((x) => x.r), max,
    `Layer ${l}: experts used at each noise level`,
    { head: 'noise', names: noiseRows.map((x) => noiseLabel(x.b, n)) });
  drawLegend(els.legend, max, rep.num_experts, 'Share of the row (class or noise level)');
}
