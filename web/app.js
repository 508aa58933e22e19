// The demo page: loads Keel's npm package (pkg/, built by scripts/build-web.sh), opens the
// WebGPU device, loads a model from this server or from local files, generates with
// streamed tokens (optionally with LCM, side by side) and fine-tunes. Every request goes
// to this page's own origin.
import { Engine, isModelFile } from './pkg/index.js';

const $ = (id) => document.getElementById(id);
let engine = null;
let model = null;
let busy = false;
// Aborts the running generation, chat reply or fine-tune (the Stop buttons).
let running = null;
// The chat so far: OpenAI-style messages.
let conversation = [];
// Whether the model has a LoRA adapter to download.
let hasAdapter = false;

function status(text, isError = false) {
  $('status').textContent = text;
  $('status').classList.toggle('error', isError);
}

// Errors from Rust arrive as Error objects with one line of text.
const message = (e) => (e && e.message) ? e.message : String(e);

function setBusy(on) {
  busy = on;
  running = on ? new AbortController() : null;
  $('generate').disabled = on || !model;
  $('finetune').disabled = on || !model;
  $('chat-send').disabled = on || !model?.info.chat_template;
  $('stop').disabled = $('chat-stop').disabled = $('ft-stop').disabled = !on;
  $('ft-download').disabled = on || !hasAdapter;
  for (const b of document.querySelectorAll('.model-list button')) b.disabled = on;
}

// Chromium on Linux hides WebGPU adapters unless it is told otherwise.
const LINUX_HINT = 'On Linux, Chromium offers WebGPU only when started with --enable-unsafe-webgpu ' +
  '(e.g. chromium --enable-unsafe-webgpu http://127.0.0.1:8080/).';

async function start() {
  if (!navigator.gpu) {
    status(`This browser has no WebGPU (navigator.gpu is missing). Try a current Chrome or Edge. ${LINUX_HINT}`, true);
    $('adapter').textContent = 'No WebGPU.';
    return;
  }
  try {
    engine = await Engine.open();
  } catch (e) {
    // A failed fetch or compile of keel_bg.wasm, or no adapter.
    const missing = /wasm|fetch|WebAssembly/i.test(message(e));
    status(missing ? `The wasm build did not load (${message(e)}). Build it with scripts/build-web.sh.`
      : `No usable WebGPU adapter (${message(e)}). ${LINUX_HINT}`, true);
    $('adapter').textContent = 'No adapter.';
    return;
  }
  const a = engine.adapter;
  // wgpu's web backend leaves the name empty; the browser's own adapter info names it.
  const info = (await navigator.gpu.requestAdapter())?.info;
  const name = a.name || [info?.vendor, info?.architecture, info?.description].filter(Boolean).join(' ') || '(unnamed)';
  $('adapter').textContent = `Adapter: ${name} (${a.backend}, ${a.device_type}) · ` +
    `max binding ${mib(a.max_storage_buffer_binding_size)} · max buffer ${mib(a.max_buffer_size)} · ` +
    `${a.max_storage_buffers_per_shader_stage} storage buffers/stage · ` +
    `${a.max_compute_invocations_per_workgroup} invocations/workgroup · shader-f16 ${a.shader_f16 ? 'yes' : 'no'}`;
  status('Ready: pick a model.');
  await listServerModels();
}

const mib = (bytes) => `${(bytes / 1048576).toFixed(0)} MiB`;

async function listServerModels() {
  const box = $('server-models');
  let list;
  try {
    const r = await fetch('models.json');
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    list = (await r.json()).models;
  } catch (e) {
    box.textContent = `This server offers no model list (${message(e)}); load local files below.`;
    return;
  }
  box.textContent = list.length ? '' : 'This server offers no models; load local files below.';
  for (const m of list) {
    const files = m.files.filter((f) => isModelFile(f.name));
    const size = files.reduce((s, f) => s + f.size, 0);
    const b = document.createElement('button');
    b.textContent = `${m.name} (${mib(size)})`;
    b.dataset.model = m.name;
    b.addEventListener('click', () => loadFromServer(m.name, files));
    box.append(b);
  }
}

async function loadFromServer(name, files) {
  await loadModel(name, { url: `models/${encodeURIComponent(name)}/`, files });
}

async function loadLocal(fileList) {
  await loadModel('local files', fileList);
}

async function loadModel(label, source) {
  if (busy || !engine) return;
  setBusy(true);
  status(`Loading ${label}…`);
  try {
    const t0 = performance.now();
    // The previous model stays loaded until the new one has loaded.
    const loaded = await engine.load(source, { name: label, onProgress: (text) => status(text) });
    if (model) model.free();
    model = loaded;
    hasAdapter = false;
    newChat();
    const info = model.info;
    $('model-info').textContent = `${label}: ${info.arch}, ${info.layers} layers, hidden ${info.hidden}, ` +
      `vocabulary ${info.vocab}, context ${info.context}, ${(info.params / 1e6).toFixed(2)} M parameters, ` +
      `${mib(model.gpuBytes)} on the GPU (loaded in ${((performance.now() - t0) / 1000).toFixed(2)} s)`;
    $('model-info').dataset.loaded = label;
    status(`Loaded ${label}.`);
  } catch (e) {
    status(`Could not load ${label}: ${message(e)}`, true);
  } finally {
    setBusy(false);
  }
}

function parseLayers(text) {
  const out = [];
  for (const part of text.split(',').map((s) => s.trim()).filter(Boolean)) {
    const m = part.match(/^(\d+)(?:-(\d+))?$/);
    if (!m) throw new Error(`LCM layers: '${part}' is not a block index or range like 2-4`);
    const [a, b] = [Number(m[1]), Number(m[2] ?? m[1])];
    if (b < a) throw new Error(`LCM layers: '${part}' runs backwards`);
    for (let l = a; l <= b; l++) out.push(l);
  }
  return out;
}

function lcmSettings() {
  const num = (id) => Number($(id).value);
  const lcm = { gamma: num('lcm-gamma'), rho: num('lcm-rho'), tau: num('lcm-tau'), kappa: num('lcm-kappa'),
    sink: num('lcm-sink'), space: $('lcm-space').value };
  const layers = $('lcm-layers').value.trim();
  if (layers) lcm.layers = parseLayers(layers);
  const scales = $('lcm-scales').value.trim();
  if (scales) {
    lcm.scales = scales.split(',').map((p) => {
      const [r, g] = p.split(':').map(Number);
      if (!Number.isFinite(r) || !Number.isFinite(g)) throw new Error(`LCM scales: '${p}' is not rho:gamma`);
      return [r, g];
    });
  }
  return lcm;
}

function request(lcm) {
  return {
    prompt: $('prompt').value, max_tokens: maxTokens(), temperature: Number($('temperature').value),
    top_k: Number($('top-k').value), top_p: Number($('top-p').value), seed: Number($('seed').value), lcm,
  };
}

// Max tokens as a whole number of at least 1, or a refusal in words.
function maxTokens() {
  const n = Number($('max-tokens').value);
  if (!Number.isInteger(n) || n < 1) throw new Error(`Max tokens must be a whole number of at least 1, not '${$('max-tokens').value}'.`);
  return n;
}

// Checks the settings a generation or chat turn reads before it starts: the LCM settings
// when LCM is on (else null), or undefined after saying in the status line what is wrong.
function checkedSettings() {
  try {
    const lcm = $('lcm-on').checked ? lcmSettings() : null;
    maxTokens();
    return lcm;
  } catch (e) {
    status(message(e), true);
    return undefined;
  }
}

// The output panels for the LCM settings: one (plain or LCM) or baseline and modulated side
// by side. Switching layout clears outputs and plots of the other one, so none is stale.
function layoutOutputs() {
  const lcm = $('lcm-on').checked;
  const sideBySide = lcm && $('side-by-side').checked;
  const title = sideBySide ? 'Baseline' : (lcm ? 'Output (LCM)' : 'Output');
  if ($('out-a-title').textContent !== title) {
    for (const id of ['out-a', 'out-b']) {
      $(id).textContent = '';
      delete $(id).dataset.ids;
    }
    for (const id of ['plot-entropy', 'plot-ppl']) plot($(id), [], PLOT_AXES[id]);
    $('speed').textContent = '';
    delete $('outputs').dataset.done;
  }
  $('out-a-title').textContent = title;
  $('out-b-box').hidden = !sideBySide;
}

const WINDOW = 16;
const PLOT_AXES = {
  'plot-entropy': { x: 'generated token', y: 'entropy (nats)' },
  'plot-ppl': { x: 'generated token', y: `perplexity (last ${WINDOW})` },
  'plot-loss': { x: 'step', y: 'training loss' },
};

// One generation streamed into `out`; returns its result and per-token metrics.
async function runOne(lcm, out) {
  out.textContent = '';
  const prompt = document.createElement('span');
  prompt.className = 'prompt-part';
  prompt.textContent = $('prompt').value;
  out.append(prompt);
  const entropy = [], ppl = [], logprobs = [];
  const t0 = performance.now();
  let firstAt = null;
  const result = await model.generate({ ...request(lcm), signal: running.signal, onToken: (t) => {
    firstAt ??= performance.now();
    out.append(t.text);
    entropy.push(t.entropy);
    logprobs.push(t.logprob);
    const w = logprobs.slice(-WINDOW);
    ppl.push(Math.exp(-w.reduce((s, x) => s + x, 0) / w.length));
  } });
  const decodeS = (performance.now() - firstAt) / 1000;
  out.dataset.ids = JSON.stringify(result.ids);
  return { result, entropy, ppl, decodeTps: result.ids.length > 1 ? (result.ids.length - 1) / decodeS : 0,
    totalS: (performance.now() - t0) / 1000 };
}

async function generate() {
  if (busy || !model) return;
  const lcm = checkedSettings();
  if (lcm === undefined) return;
  const sideBySide = $('side-by-side').checked && lcm;
  layoutOutputs();
  delete $('outputs').dataset.done;
  setBusy(true);
  status('Generating…');
  try {
    const runs = [];
    runs.push(await runOne(sideBySide ? null : lcm, $('out-a')));
    if (sideBySide) runs.push(await runOne(lcm, $('out-b')));
    const colors = ['#1f6feb', '#d1495b'];
    const names = sideBySide ? ['baseline', 'LCM'] : [lcm ? 'LCM' : 'no LCM'];
    const series = (key) => runs.map((r, i) => ({ values: r[key], color: colors[i], name: names[i] }));
    plot($('plot-entropy'), series('entropy'), PLOT_AXES['plot-entropy']);
    plot($('plot-ppl'), series('ppl'), PLOT_AXES['plot-ppl']);
    const r = runs[runs.length - 1];
    $('speed').textContent = runs.map((x, i) => `${sideBySide ? ['baseline', 'LCM'][i] + ': ' : ''}${x.result.ids.length} tokens, ` +
      `decode ${x.decodeTps.toFixed(1)} tokens/s`).join(' · ');
    $('speed').dataset.decodeTps = r.decodeTps;
    $('outputs').dataset.done = 'yes';
    status('Done.');
  } catch (e) {
    status(running?.signal.aborted ? 'Stopped.' : `Generation failed: ${message(e)}`, !running?.signal.aborted);
  } finally {
    setBusy(false);
  }
}

async function finetune() {
  if (busy || !model) return;
  const text = $('ft-text').value;
  if (!text.trim()) {
    status('Paste or drop some text to fine-tune on first.', true);
    return;
  }
  setBusy(true);
  delete $('ft-result').dataset.losses;
  const losses = [];
  status('Fine-tuning…');
  try {
    const rank = Number($('ft-lora-rank').value);
    const lora = rank > 0 ? { rank, targets: $('ft-lora-targets').value.trim() || 'q,v' } : undefined;
    if (lora && $('ft-lora-alpha').value !== '') lora.alpha = Number($('ft-lora-alpha').value);
    const done = await model.finetune({ text, steps: Number($('ft-steps').value), lr: Number($('ft-lr').value),
      batch: Number($('ft-batch').value), seq_len: Number($('ft-seq').value), lora, signal: running.signal,
      onStep: (step, loss) => {
      losses.push(loss);
      plot($('plot-loss'), [{ values: losses, color: '#2a9d4b', name: 'loss' }], PLOT_AXES['plot-loss']);
      $('ft-result').textContent = `step ${step + 1}: loss ${loss.toFixed(4)}`;
    } });
    hasAdapter ||= !!lora;
    $('ft-result').textContent = `${done.length} steps: loss ${done[0].toFixed(4)} → ${done[done.length - 1].toFixed(4)}; ` +
      (lora ? 'generation now uses the weights with the adapter merged, and the adapter is ready to download.'
        : 'generation now uses the fine-tuned weights.');
    $('ft-result').dataset.losses = JSON.stringify(done);
    status('Fine-tuning done.');
  } catch (e) {
    status(running?.signal.aborted ? 'Stopped.' : `Fine-tuning failed: ${message(e)}`, !running?.signal.aborted);
  } finally {
    setBusy(false);
  }
}

// The LoRA adapter's two files, each as a download.
function downloadAdapter() {
  if (!model || !hasAdapter) return;
  for (const [name, bytes] of Object.entries(model.adapterFiles())) {
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([bytes]));
    a.download = name;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
  }
}

function chatTurn(role, text) {
  const div = document.createElement('div');
  div.className = `turn ${role}`;
  div.textContent = text;
  $('chat-log').append(div);
  return div;
}

function newChat() {
  conversation = [];
  $('chat-log').textContent = '';
  delete $('chat-log').dataset.ids;
}

// One user message and the model's streamed reply, through engine.chat.completions.
async function sendChat() {
  const text = $('chat-input').value.trim();
  if (busy || !model || !text) return;
  const lcm = checkedSettings();
  if (lcm === undefined) return;
  if (!conversation.length && $('chat-system').value.trim()) {
    conversation.push({ role: 'system', content: $('chat-system').value.trim() });
  }
  conversation.push({ role: 'user', content: text });
  chatTurn('user', text);
  $('chat-input').value = '';
  delete $('chat-log').dataset.ids;
  setBusy(true);
  status('Replying…');
  const reply = chatTurn('assistant', '');
  try {
    const stream = await engine.chat.completions.create({
      messages: conversation, stream: true, max_tokens: maxTokens(), temperature: Number($('temperature').value),
      top_p: Number($('top-p').value), seed: Number($('seed').value), signal: running.signal,
      keel: { lcm, top_k: Number($('top-k').value) },
    });
    for await (const chunk of stream) {
      reply.textContent += chunk.choices[0].delta.content ?? '';
      if (chunk.keel) $('chat-log').dataset.ids = JSON.stringify(chunk.keel.ids);
    }
    conversation.push({ role: 'assistant', content: reply.textContent });
    status('Done.');
  } catch (e) {
    // A stopped reply stays in the conversation as far as it went.
    if (running.signal.aborted) {
      conversation.push({ role: 'assistant', content: reply.textContent });
      status('Stopped.');
    } else {
      conversation.pop();
      reply.remove();
      status(`Chat failed: ${message(e)}`, true);
    }
  } finally {
    setBusy(false);
  }
}

// A line chart of named series on a canvas: y from 0 to the largest value, labelled axes
// (`axes`: {x, y}) and a legend row above the plot, so that it covers no line. The canvas keeps
// what it shows in data-legend and data-axes (and says it in aria-label).
function plot(canvas, series, axes) {
  const ctx = canvas.getContext('2d');
  const { width: w, height: h } = canvas;
  const [left, right, top, bottom] = [46, 8, 22, 34];
  ctx.clearRect(0, 0, w, h);
  canvas.dataset.legend = series.map((s) => s.name).join(',');
  canvas.dataset.axes = `${axes.x};${axes.y}`;
  canvas.setAttribute('aria-label', `${axes.y} against ${axes.x}: ${canvas.dataset.legend || 'no data yet'}`);
  ctx.font = '11px sans-serif';
  ctx.fillStyle = '#66707c';
  ctx.strokeStyle = '#c9ced4';
  ctx.beginPath();
  ctx.moveTo(left, top); ctx.lineTo(left, h - bottom); ctx.lineTo(w - right, h - bottom);
  ctx.stroke();
  ctx.textAlign = 'center';
  ctx.fillText(axes.x, left + (w - left - right) / 2, h - 4);
  ctx.save();
  ctx.translate(11, top + (h - top - bottom) / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText(axes.y, 0, 0);
  ctx.restore();
  const all = series.flatMap((s) => s.values).filter(Number.isFinite);
  if (!all.length) return;
  const ymax = Math.max(...all) * 1.05 || 1;
  const n = Math.max(...series.map((s) => s.values.length));
  ctx.textAlign = 'right';
  ctx.fillText(ymax.toPrecision(3), left - 4, top + 8);
  ctx.fillText('0', left - 4, h - bottom);
  ctx.textAlign = 'left';
  ctx.fillText('1', left, h - bottom + 12);
  ctx.textAlign = 'right';
  ctx.fillText(String(n), w - right, h - bottom + 12);
  // The legend: a swatch and a name per series, left to right above the plot.
  let x = left;
  ctx.textAlign = 'left';
  for (const s of series) {
    ctx.fillStyle = s.color;
    ctx.fillRect(x, 7, 14, 4);
    ctx.fillStyle = '#333';
    ctx.fillText(s.name, x + 18, 13);
    x += 28 + ctx.measureText(s.name).width;
  }
  for (const s of series) {
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    s.values.forEach((v, i) => {
      const px = left + (n > 1 ? i / (n - 1) : 0) * (w - left - right);
      const py = h - bottom - (v / ymax) * (h - top - bottom);
      if (i) ctx.lineTo(px, py); else ctx.moveTo(px, py);
    });
    ctx.stroke();
  }
}

function setupDrop() {
  const drop = $('drop');
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', async (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    const files = [];
    // A dropped folder arrives as a directory entry: read its files (one level).
    const entries = [...e.dataTransfer.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
    for (const entry of entries) {
      if (entry.isDirectory) {
        const children = await new Promise((ok, fail) => entry.createReader().readEntries(ok, fail));
        for (const c of children.filter((c) => c.isFile)) files.push(await new Promise((ok, fail) => c.file(ok, fail)));
      } else {
        files.push(await new Promise((ok, fail) => entry.file(ok, fail)));
      }
    }
    await loadLocal(files.length ? files : e.dataTransfer.files);
  });
  $('pick-folder').addEventListener('change', (e) => loadLocal(e.target.files));
  $('pick-files').addEventListener('change', (e) => loadLocal(e.target.files));
  const ft = $('ft-text');
  ft.addEventListener('dragover', (e) => e.preventDefault());
  ft.addEventListener('drop', async (e) => {
    e.preventDefault();
    const f = e.dataTransfer.files[0];
    if (f) ft.value = await f.text();
  });
}

$('generate').addEventListener('click', generate);
$('ft-download').addEventListener('click', downloadAdapter);
for (const id of ['stop', 'chat-stop', 'ft-stop']) $(id).addEventListener('click', () => running?.abort());
$('chat-send').addEventListener('click', sendChat);
$('chat-clear').addEventListener('click', newChat);
$('lcm-on').addEventListener('change', layoutOutputs);
$('side-by-side').addEventListener('change', layoutOutputs);
$('finetune').addEventListener('click', finetune);
setupDrop();
start();
