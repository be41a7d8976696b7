// Renders a Vega spec headless with the real engine: reads {spec, values: {data name: rows}, signals} on stdin,
// replaces each named data source's url with the rows given (what Kibana's search would return), runs the
// view and prints {errors, warnings, marks: {mark name: [{datum fields, bounds, fill, stroke}]}, svg}.
import * as vega from "vega";

// Without node-canvas Vega estimates a text's width at 0.8 em a character, wider than any sans-serif font a
// browser measures; 0.6 em is what the product's layout sizes state boxes for.
vega.textMetrics.width = (item, text) => 0.6 * (item.fontSize || 11) * String(text ?? "").length;

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const { spec, values, signals } = JSON.parse(Buffer.concat(chunks).toString("utf8"));
for (const d of spec.data || []) {
  if (d.name in values) {
    delete d.url;
    delete d.format;
    d.values = values[d.name];
  }
}
const errors = [];
const warnings = [];
const logger = {
  level() { return this; },
  error(...a) { errors.push(a.map(String).join(" ")); return this; },
  warn(...a) { warnings.push(a.map(String).join(" ")); return this; },
  info() { return this; },
  debug() { return this; },
};
const out = { errors, warnings, marks: {} };
// The fields the assertions read (a datum also carries the whole search hit it was flattened from).
const pick = (d) => {
  if (!d) return null;
  const r = {};
  for (const k of ["id", "role", "onpath", "node", "edge", "takenId", "outside", "self"]) if (k in d) r[k] = d[k];
  return r;
};
try {
  const view = new vega.View(vega.parse(spec, null, { ast: false }), { renderer: "none", logger, logLevel: vega.Warn });
  for (const [name, value] of Object.entries(signals || {})) view.signal(name, value); // a control moved
  await view.runAsync();
  const walk = (node) => {
    if (!node) return;
    if (node.marktype !== undefined && node.name) {
      out.marks[node.name] = (node.items || []).map((it) => ({
        datum: pick(it.datum),
        x1: it.bounds.x1, y1: it.bounds.y1, x2: it.bounds.x2, y2: it.bounds.y2,
        text: it.text, fill: it.fill, stroke: it.stroke, strokeWidth: it.strokeWidth, path: it.path,
      }));
    }
    for (const it of node.items || []) walk(it);
  };
  walk(view.scenegraph().root);
  out.signals = { width: view.signal("width"), height: view.signal("height"), heading: view.signal("heading") };
  out.svg = await view.toSVG();
  view.finalize();
} catch (e) {
  errors.push(String(e && e.stack ? e.stack : e));
}
process.stdout.write(JSON.stringify(out));
