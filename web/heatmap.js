// heatmap.js: rows × experts routing heatmaps and their colour legend.
//
// A heatmap is a <table>: one row per MoE layer (or per class, or per noise
// level, for the routing panel), one cell per expert, coloured by the
// expert's share of the row's routing decisions (counts divided by the
// row's sum, so rows are comparable and an even split is 1/E). Every cell also says its numbers in a tooltip and to screen
// readers. The colour scale runs from 0 to `max` (shared by the heatmaps
// drawn side by side) through a viridis-like ramp that stays readable in
// greyscale and to colour-blind readers.

const RAMP = [ // viridis at 0, 1/4, 1/2, 3/4, 1
  [68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37],
];

export function colour(v) {
  const x = Math.min(1, Math.max(0, v)) * (RAMP.length - 1);
  const i = Math.min(RAMP.length - 2, Math.floor(x)), f = x - i;
  const c = RAMP[i].map((a, k) => Math.round(a + (RAMP[i + 1][k] - a) * f));
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

// counts (L rows of E numbers) -> shares (each row sums to 1, or all 0).
export function shares(counts) {
  return counts.map((row) => {
    const sum = row.reduce((a, b) => a + b, 0);
    return row.map((c) => (sum > 0 ? c / sum : 0));
  });
}

export const maxShare = (...mats) =>
  Math.max(0, ...mats.flatMap((m) => (m ? m.flat() : [])));

const pct = (v) => `${+(v * 100).toFixed(1)}%`; // 12.5%, 36%

// Draws counts into el (replacing its content). label names the table;
// rows names the rows: {head, names} (default: layers, by number).
export function drawHeatmap(el, counts, max, label, rows = null) {
  const sh = shares(counts);
  const E = counts[0] ? counts[0].length : 0;
  const rowHead = rows ? rows.head : 'layer';
  const names = rows ? rows.names : counts.map((_, l) => String(l));
  const table = document.createElement('table');
  table.className = rows ? 'hm hm-named' : 'hm';
  table.setAttribute('aria-label', label);
  const head = table.createTHead().insertRow();
  head.appendChild(document.createElement('th')).textContent = rowHead;
  for (let e = 0; e < E; e++) {
    const th = head.appendChild(document.createElement('th'));
    th.scope = 'col';
    th.textContent = e;
    th.title = `expert ${e}`;
  }
  const body = table.createTBody();
  sh.forEach((row, l) => {
    const tr = body.insertRow();
    const th = tr.appendChild(document.createElement('th'));
    th.scope = 'row';
    th.textContent = names[l];
    th.title = names[l];
    row.forEach((v, e) => {
      const td = tr.insertCell();
      td.style.background = colour(max > 0 ? v / max : 0);
      td.dataset.count = counts[l][e];
      const text = `${rowHead} ${names[l]}, expert ${e}: ${pct(v)} (${counts[l][e].toLocaleString()} tokens)`;
      td.title = text;
      td.setAttribute('aria-label', text);
    });
  });
  el.replaceChildren(table);
}

// A horizontal colour bar from 0 to max with ticks, and the even split.
// caption says what the shares are of.
export function drawLegend(el, max, E, caption = 'Share of the layer') {
  const stops = Array.from({ length: 11 }, (_, i) => `${colour(i / 10)} ${i * 10}%`);
  const even = E > 0 && max > 0 ? Math.min(1, 1 / E / max) : null;
  el.innerHTML = '';
  const cap = el.appendChild(document.createElement('span'));
  cap.className = 'legend-cap';
  cap.textContent = caption;
  const bar = el.appendChild(document.createElement('div'));
  bar.className = 'legend-bar';
  bar.style.background = `linear-gradient(to right, ${stops.join(', ')})`;
  bar.setAttribute('role', 'img');
  bar.setAttribute('aria-label', `colour scale from 0% (dark purple) to ${pct(max)} (yellow)`);
  const ticks = el.appendChild(document.createElement('div'));
  ticks.className = 'legend-ticks';
  for (const f of [0, 0.5, 1]) {
    const t = ticks.appendChild(document.createElement('span'));
    t.textContent = pct(max * f);
    t.style.left = `${f * 100}%`;
  }
  if (even !== null) { // a notch on the bar, labelled above it
    const m = bar.appendChild(document.createElement('span'));
    m.className = 'legend-even';
    m.style.left = `${even * 100}%`;
    const above = el.insertBefore(document.createElement('div'), bar);
    above.className = 'legend-ticks legend-above';
    const t = above.appendChild(document.createElement('span'));
    t.textContent = `even split ${pct(1 / E)}`;
    t.style.left = `${even * 100}%`;
  }
}
