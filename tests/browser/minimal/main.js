// A plain page using Keel's npm package as an application would: open the engine, load one of
// this server's models (keel serve's models.json), continue a prompt greedily. The browser test
// (tests/browser/minimal.mjs) reads #out's data-ids and then works `window.keel` further.
import * as keel from './node_modules/keel-webgpu/index.js';

const out = document.getElementById('out');
const params = new URLSearchParams(location.search);
try {
  const engine = await keel.Engine.open();
  const { models } = await (await fetch('models.json')).json();
  const found = models.find((m) => m.name === params.get('model'));
  if (!found) throw new Error(`this server offers no model '${params.get('model')}'`);
  const model = await engine.load({ url: `models/${encodeURIComponent(found.name)}/`, files: found.files });
  const r = await model.generate({ prompt: params.get('prompt'), max_tokens: Number(params.get('max_tokens')),
    temperature: 0, onToken: (t) => out.append(t.text) });
  window.keel = { ...keel, engine, models };
  out.dataset.ids = JSON.stringify(r.ids);
} catch (e) {
  out.dataset.error = e.message ?? String(e);
}
