// Drives tests/browser/minimal/ (a plain page importing Keel's npm package from node_modules/)
// in headless Chromium, for tests/browser.rs: its greedy continuation, then the package's API
// through `window.keel`: an AbortSignal stopping generation, free() (the engine's byte count
// and the page's live WebGPU buffer bytes, counted by wrapping createBuffer and destroy), and
// chat completions, plain and streamed, on a chat model. Prints one JSON object on stdout.
//
// usage: node minimal.mjs SETTINGS_JSON
//   {url, model, prompt, max_tokens, chat_model, messages, chat_tokens}
import { launch } from './chromium.mjs';

const s = JSON.parse(process.argv[2]);
const { browser, close } = await launch();
// The bytes of WebGPU buffers created and not yet destroyed, whoever made them.
await browser.addInitScript(() => {
  if (!globalThis.GPUDevice) return;
  const live = new Map();
  let bytes = 0;
  const create = GPUDevice.prototype.createBuffer;
  GPUDevice.prototype.createBuffer = function (desc) {
    const buffer = create.call(this, desc);
    live.set(buffer, desc.size);
    bytes += desc.size;
    return buffer;
  };
  const destroy = GPUBuffer.prototype.destroy;
  GPUBuffer.prototype.destroy = function () {
    if (live.has(this)) {
      bytes -= live.get(this);
      live.delete(this);
    }
    return destroy.call(this);
  };
  globalThis.liveGpuBytes = () => bytes;
});
const out = { console: [] };
try {
  const page = browser.pages()[0] ?? await browser.newPage();
  page.on('console', (m) => out.console.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => out.console.push(`pageerror: ${e.message}`));
  const query = new URLSearchParams({ model: s.model, prompt: s.prompt, max_tokens: String(s.max_tokens) });
  await page.goto(`${s.url}?${query}`);
  await page.waitForFunction(() => document.getElementById('out').dataset.ids || document.getElementById('out').dataset.error,
    null, { timeout: 120_000 });
  out.page = await page.evaluate(() => ({ ...document.getElementById('out').dataset, text: document.getElementById('out').textContent }));
  if (out.page.error) throw new Error(`the minimal page: ${out.page.error}`);
  Object.assign(out, await page.evaluate(async (s) => {
    const { engine, models } = window.keel;
    const r = {};
    const failure = async (run) => {
      try {
        await run();
        return { name: 'none', message: 'no error' };
      } catch (e) {
        return { name: e.name, message: e.message };
      }
    };
    const model = engine.model;
    // Aborted during the third token's callback: the generation stops at the next token.
    const controller = new AbortController();
    let seen = 0;
    r.abort = await failure(() => model.generate({ prompt: s.prompt, max_tokens: 100, temperature: 0,
      signal: controller.signal, onToken: () => { if (++seen === 3) controller.abort(); } }));
    r.abort.seen = seen;
    r.aborted_before = await failure(() => model.generate({ prompt: s.prompt, max_tokens: 4, signal: AbortSignal.abort() }));
    r.after_abort = (await model.generate({ prompt: s.prompt, max_tokens: s.max_tokens, temperature: 0 })).ids;
    r.typo = await failure(() => model.generate({ prompt: s.prompt, max_tokens: 4, temprature: 0 }));
    // free(): the engine's count and the page's live WebGPU buffers.
    r.free = { before: { engine: model.gpuBytes, live: liveGpuBytes() } };
    model.free();
    r.free.after = { engine: model.gpuBytes, live: liveGpuBytes() };
    r.free.generate = await failure(() => model.generate({ prompt: s.prompt, max_tokens: 4 }));
    r.free.chat = await failure(() => engine.chat.completions.create({ messages: s.messages, max_tokens: 4 }));
    r.free.no_model = engine.model === null;

    const chatModel = models.find((m) => m.name === s.chat_model);
    const chat = await engine.load({ url: `models/${encodeURIComponent(chatModel.name)}/`, files: chatModel.files });
    r.chat_info = chat.info;
    r.chat_prompt = chat.chatPrompt(s.messages);
    const params = { messages: s.messages, max_tokens: s.chat_tokens, temperature: 0 };
    r.completion = await engine.chat.completions.create(params);
    r.chunks = [];
    for await (const chunk of await engine.chat.completions.create({ ...params, stream: true })) r.chunks.push(chunk);
    // A stream stopped by its signal after its third chunk.
    const stop = new AbortController();
    let chunks = 0;
    r.stream_abort = await failure(async () => {
      for await (const _ of await engine.chat.completions.create({ ...params, stream: true, signal: stop.signal })) {
        if (++chunks === 3) stop.abort();
      }
    });
    r.stream_abort.chunks = chunks;
    r.plain_model_chat = await failure(async () => {
      const plain = models.find((m) => m.name === s.model);
      const m = await engine.load({ url: `models/${encodeURIComponent(plain.name)}/`, files: plain.files });
      await m.chat.completions.create(params);
    });
    return r;
  }, s));
} catch (e) {
  out.error = String(e);
} finally {
  await close();
}
console.log(JSON.stringify(out));
