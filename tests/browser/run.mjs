// Drives the demo page in headless Chromium (WebGPU on SwiftShader) through its own
// controls, for tests/browser.rs: offers it files that are not a model, loads stories260k
// from local files and then, with one click, from the server, generates greedily without and with LCM
// and with sampling, fine-tunes a few steps (every weight, then LoRA, whose adapter it
// downloads), loads a served GGUF (generate, fine-tune), chats
// with a served chat model (one greedy reply), saves a screenshot and counts its distinct
// colours. Prints one JSON object on stdout.
//
// usage: node run.mjs SETTINGS_JSON
//   {url, model, local_files: [paths], prompt, max_tokens, lcm: {gamma, layers, sink, space},
//    sampling: {temperature, top_k, top_p, seed}, finetune: {text, steps, lr}, lora: {rank, targets, dir},
//    gguf: served model name, chat: {model, message, max_tokens}, screenshot}
import { launch } from './chromium.mjs';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

const s = JSON.parse(process.argv[2]);
const { browser, close } = await launch({ viewport: { width: 1100, height: 1500 } });
const out = { requests: [], console: [] };
try {
  const page = browser.pages()[0] ?? await browser.newPage();
  page.on('request', (r) => out.requests.push(r.headers().range ? `${r.url()} ${r.headers().range}` : r.url()));
  page.on('console', (m) => out.console.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => out.console.push(`pageerror: ${e.message}`));
  const minutes = 60_000;
  await page.goto(s.url);
  await page.waitForFunction(() => document.querySelector('.model-list button')
    || document.getElementById('status').classList.contains('error'), null, { timeout: 2 * minutes });
  // Files that are not a model: the page says so in words, and stays usable.
  const refusal = async (files) => {
    await page.setInputFiles('#pick-files', files.map(([name, text]) => ({ name, mimeType: 'application/octet-stream',
      buffer: Buffer.from(text) })));
    await page.waitForFunction(() => document.getElementById('status').classList.contains('error'), null,
      { timeout: minutes });
    return page.locator('#status').textContent();
  };
  out.refusals = [
    await refusal([['notes.txt', 'hello']]),
    await refusal([['config.json', '{}'], ['model.safetensors', 'not a safetensors file']]),
    await refusal([['config.json', '{"model_type": "llama"']]),
  ];
  const loaded = (label) => page.waitForFunction((label) => document.getElementById('model-info').dataset.loaded === label
    || document.getElementById('status').classList.contains('error'), label, { timeout: 2 * minutes });
  out.adapter = await page.locator('#adapter').textContent();
  // The LCM panel's starting setting, before any control is touched.
  out.lcm_defaults = await page.evaluate(() => Object.fromEntries(['gamma', 'layers', 'rho', 'tau', 'kappa', 'sink', 'space']
    .map((k) => [k, document.getElementById(`lcm-${k}`).value])));

  // Greedy unless `sampling` ({temperature, top_k, top_p, seed}) is given.
  async function generate(lcm, sideBySide = false, sampling = null) {
    await page.fill('#prompt', s.prompt);
    await page.fill('#max-tokens', String(s.max_tokens));
    await page.fill('#temperature', String(sampling ? sampling.temperature : 0));
    if (sampling) {
      await page.fill('#top-k', String(sampling.top_k));
      await page.fill('#top-p', String(sampling.top_p));
      await page.fill('#seed', String(sampling.seed));
    }
    await page.setChecked('#lcm-on', !!lcm);
    await page.setChecked('#side-by-side', sideBySide);
    if (lcm) {
      await page.fill('#lcm-gamma', String(lcm.gamma));
      await page.fill('#lcm-layers', lcm.layers);
      await page.fill('#lcm-sink', String(lcm.sink));
      await page.selectOption('#lcm-space', lcm.space);
    }
    await page.click('#generate');
    await page.waitForFunction(() => document.getElementById('outputs').dataset.done
      || document.getElementById('status').classList.contains('error'), null, { timeout: 5 * minutes });
    const ids = async (id) => JSON.parse(await page.locator(id).getAttribute('data-ids'));
    return { ids: await ids('#out-a'), ids_b: sideBySide ? await ids('#out-b') : null,
      status: await page.locator('#status').textContent(),
      decode_tps: Number(await page.locator('#speed').getAttribute('data-decode-tps')) };
  }
  // The model's folder through the file picker (File.slice per tensor), then from the server.
  await page.setInputFiles('#pick-files', s.local_files);
  await loaded('local files');
  out.local = await generate(null);
  await page.locator(`button[data-model="${s.model}"]`).click({ timeout: 2 * minutes });
  await loaded(s.model);
  out.plain = await generate(null);
  out.lcm = await generate(s.lcm);
  // Baseline and modulated in one click, the way the page shows them side by side.
  out.side_by_side = await generate(s.lcm, true);
  // What the plots show: their legends and axes.
  out.plots = await page.evaluate(() => ['plot-entropy', 'plot-ppl'].map((id) => {
    const c = document.getElementById(id);
    return { legend: c.dataset.legend, axes: c.dataset.axes };
  }));
  // LCM switched off: no Baseline / Modulated panels left over from the side-by-side run.
  await page.setChecked('#lcm-on', false);
  out.after_lcm_off = await page.evaluate(() => ({ b_hidden: document.getElementById('out-b-box').hidden,
    title: document.getElementById('out-a-title').textContent, text: document.getElementById('out-a').textContent,
    legend: document.getElementById('plot-entropy').dataset.legend }));
  // Max tokens 0: refused in words, nothing generated.
  await page.fill('#max-tokens', '0');
  await page.click('#generate');
  await page.waitForFunction(() => document.getElementById('status').classList.contains('error'), null, { timeout: minutes });
  out.zero_tokens = await page.locator('#status').textContent();
  if (s.sampling) out.sampled = await generate(null, false, s.sampling);

  async function finetune() {
    await page.click('#finetune');
    await page.waitForFunction(() => document.getElementById('ft-result').dataset.losses
      || document.getElementById('status').classList.contains('error'), null, { timeout: 5 * minutes });
    const losses = await page.locator('#ft-result').getAttribute('data-losses');
    return { losses: losses && JSON.parse(losses), status: await page.locator('#status').textContent() };
  }
  if (s.finetune) {
    await page.fill('#ft-text', s.finetune.text);
    await page.fill('#ft-steps', String(s.finetune.steps));
    await page.fill('#ft-lr', String(s.finetune.lr));
    out.finetune = await finetune();
  }
  // LoRA: the same steps on adapters, whose two files are then downloaded into `lora.dir`.
  if (s.lora) {
    await page.fill('#ft-lora-rank', String(s.lora.rank));
    await page.fill('#ft-lora-targets', s.lora.targets);
    out.lora = await finetune();
    const files = [];
    const saved = new Promise((done) => {
      const save = async (download) => {
        files.push(download.suggestedFilename());
        await download.saveAs(join(s.lora.dir, download.suggestedFilename()));
        if (files.length === 2) {
          page.off('download', save);
          done();
        }
      };
      page.on('download', save);
    });
    await page.click('#ft-download');
    let timer;
    await Promise.race([saved, new Promise((_, fail) => {
      timer = setTimeout(() => fail(new Error(`the adapter's downloads did not come: ${files}`)), minutes);
    })]);
    clearTimeout(timer);
    out.lora.files = files.sort();
    await page.fill('#ft-lora-rank', '0');
    // Generation now runs with the adapter merged.
    out.lora.generated = await generate(null);
  }
  // A served .gguf (streamed chunk by chunk into the loader), then fine-tuned from f32 copies
  // of its packed weights.
  if (s.gguf) {
    await page.locator(`button[data-model="${s.gguf}"]`).click({ timeout: 2 * minutes });
    await loaded(s.gguf);
    out.gguf = await generate(null);
    out.gguf.finetune = await finetune();
  }

  // The chat panel: one message to a served chat model, its reply greedy.
  if (s.chat) {
    await page.locator(`button[data-model="${s.chat.model}"]`).click({ timeout: 2 * minutes });
    await loaded(s.chat.model);
    await page.setChecked('#lcm-on', false);
    await page.fill('#temperature', '0');
    await page.fill('#max-tokens', String(s.chat.max_tokens));
    await page.fill('#chat-input', s.chat.message);
    await page.click('#chat-send');
    await page.waitForFunction(() => document.getElementById('chat-log').dataset.ids
      || document.getElementById('status').classList.contains('error'), null, { timeout: 5 * minutes });
    const ids = await page.locator('#chat-log').getAttribute('data-ids');
    out.chat = { ids: ids && JSON.parse(ids), status: await page.locator('#status').textContent(),
      turns: await page.locator('#chat-log .turn').allTextContents() };
  }

  const png = await page.screenshot({ fullPage: true });
  writeFileSync(s.screenshot, png);
  // Decode the PNG in the page itself and count its distinct colours (a blank shot has one).
  out.screenshot = await page.evaluate(async (b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const bitmap = await createImageBitmap(new Blob([bytes], { type: 'image/png' }));
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = canvas.getContext('2d');
    ctx.drawImage(bitmap, 0, 0);
    const data = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
    const colours = new Set();
    for (let i = 0; i < data.length; i += 4) colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
    return { width: bitmap.width, height: bitmap.height, colours: colours.size };
  }, png.toString('base64'));
} catch (e) {
  out.error = String(e);
} finally {
  await close();
}
// Chromium started without --enable-unsafe-webgpu, as Linux users first do: the page says
// which flag is missing.
if (!out.error) {
  const { browser: plain, close: closePlain } = await launch({ webgpu: false });
  try {
    const page = plain.pages()[0] ?? await plain.newPage();
    await page.goto(s.url);
    await page.waitForFunction(() => document.getElementById('status').classList.contains('error')
      || document.querySelector('.model-list button'), null, { timeout: 60_000 });
    out.without_flag = await page.locator('#status').textContent();
  } catch (e) {
    out.error = `without --enable-unsafe-webgpu: ${e}`;
  } finally {
    await closePlain();
  }
}
console.log(JSON.stringify(out));
