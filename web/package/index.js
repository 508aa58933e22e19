// Keel in the browser: the npm package's entry. Wraps the wasm-bindgen classes of keel.js
// (src/web.rs) in the API that index.d.ts declares: plain objects in and out, AbortSignal
// for generation and fine-tuning, free() that gives the GPU buffers back, model loading from
// a server (HTTP Range per tensor) or local files, and chat completions shaped like OpenAI's.
import init, { Engine as RawEngine } from './keel.js';

let ready = null;

const message = (e) => (e && e.message) ? e.message : String(e);

// Files a model needs; others in a folder (tokenizer.model, READMEs) are not read.
export const isModelFile = (name) =>
  /^(config\.json|generation_config\.json|tokenizer\.json|tokenizer_config\.json|model\.safetensors\.index\.json)$/.test(name) ||
  /\.(safetensors|gguf)$/.test(name);

// As natively: a folder with config.json is a safetensors model, whatever .gguf it also holds.
const modelFiles = (files) => files.some((f) => f.name === 'config.json') ? files.filter((f) => !f.name.endsWith('.gguf')) : files;

// Runs `load` on the small files (config.json first among them) and only then on the
// weights files: the loader needs config.json to place each safetensors tensor it is given.
async function smallFilesFirst(files, load) {
  const big = (f) => /\.(safetensors|gguf)$/.test(f.name);
  await Promise.all(files.filter((f) => !big(f)).map(load));
  for (const f of files.filter(big)) await load(f);
}

const mib = (bytes) => `${(bytes / 1048576).toFixed(0)} MiB`;

// A safetensors file header first, then tensor by tensor (`readRange(first, last)`: an HTTP
// Range request or File.slice), each handed to the loader on its own. A tensor over the
// adapter's binding limit is refused before any weight is read.
async function streamSafetensors(loader, limit, file, size, readRange, progress) {
  if (size < 8) throw new Error(`${file}: ${size} bytes is too short for a safetensors file`);
  const n = Number(new DataView((await readRange(0, 7)).buffer).getBigUint64(0, true));
  if (8 + n > size) throw new Error(`${file}: header length ${n} runs past the end of the file (${size} bytes)`);
  let header;
  try {
    header = JSON.parse(new TextDecoder().decode(await readRange(8, 8 + n - 1)));
  } catch (e) {
    throw new Error(`${file}: the header is not JSON (${message(e)})`);
  }
  const tensors = Object.entries(header).filter(([k]) => k !== '__metadata__');
  for (const [name, t] of tensors) {
    const f32Bytes = t.shape.reduce((a, d) => a * d, 4);
    if (f32Bytes > limit) {
      throw new Error(`${file}: tensor '${name}' (shape [${t.shape}]) needs ${f32Bytes} bytes as f32 in one binding, ` +
        `over this adapter's max_storage_buffer_binding_size of ${limit} bytes`);
    }
  }
  let done = 0;
  for (const [name, t] of tensors) {
    const [a, b] = t.data_offsets;
    if (!(a <= b && 8 + n + b <= size)) throw new Error(`${file}: tensor '${name}' runs past the end of the file`);
    const bytes = b > a ? await readRange(8 + n + a, 8 + n + b - 1) : new Uint8Array(0);
    loader.tensor(file, name, t.dtype, t.shape, bytes);
    progress(`Loading ${file}: tensor ${++done} of ${tensors.length}`);
  }
}

// A .gguf file's bytes as they arrive (`body`: a File's or a fetch response's stream), chunk
// by chunk into the loader, which keeps its header and one tensor at a time.
async function streamGguf(loader, file, size, body, progress) {
  loader.gguf_begin(file, size);
  const reader = body.getReader();
  let done = 0, shown = 0;
  for (;;) {
    const { done: end, value } = await reader.read();
    if (end) break;
    try {
      loader.gguf_chunk(value);
    } catch (e) {
      reader.cancel();
      throw e;
    }
    done += value.length;
    if (done - shown >= 4 << 20) {
      progress(`Loading ${file}: ${mib(done)} of ${mib(size)}`);
      shown = done;
    }
  }
}

// Fills `loader` from `source`: {url, files: [{name, size}]} (a folder on a server that
// answers Range requests) or local File objects (an array or a FileList).
async function fill(loader, limit, source, progress) {
  if (source && typeof source.url === 'string') {
    const base = source.url.endsWith('/') ? source.url : `${source.url}/`;
    const files = modelFiles(source.files.filter((f) => isModelFile(f.name)));
    await smallFilesFirst(files, async (f) => {
      const url = `${base}${encodeURIComponent(f.name)}`;
      if (f.name.endsWith('.safetensors')) {
        await streamSafetensors(loader, limit, f.name, f.size, async (first, last) => {
          const r = await fetch(url, { headers: { Range: `bytes=${first}-${last}` } });
          if (r.status !== 206) throw new Error(`${f.name}: the server answered HTTP ${r.status} to a Range request`);
          return new Uint8Array(await r.arrayBuffer());
        }, progress);
        return;
      }
      const r = await fetch(url);
      if (!r.ok) throw new Error(`${f.name}: HTTP ${r.status}`);
      if (f.name.endsWith('.gguf')) await streamGguf(loader, f.name, f.size, r.body, progress);
      else loader.file(f.name, new Uint8Array(await r.arrayBuffer()));
    });
    return;
  }
  const all = Array.from(source);
  const files = modelFiles(all.filter((f) => isModelFile(f.name)));
  if (!files.length) {
    throw new Error(`None of ${all.map((f) => f.name).join(', ') || 'those files'} is a model file (config.json + .safetensors, or a .gguf).`);
  }
  await smallFilesFirst(files, async (f) => {
    if (f.name.endsWith('.gguf')) {
      await streamGguf(loader, f.name, f.size, f.stream(), progress);
    } else if (f.name.endsWith('.safetensors')) {
      await streamSafetensors(loader, limit, f.name, f.size,
        async (first, last) => new Uint8Array(await f.slice(first, last + 1).arrayBuffer()), progress);
    } else {
      loader.file(f.name, new Uint8Array(await f.arrayBuffer()));
    }
  });
}

// Runs `call(check)` where `check()` throws once `signal` is aborted (the wasm side calls it
// per token or step, and stops); rejects with the signal's reason when it was.
async function abortable(signal, call) {
  signal?.throwIfAborted();
  try {
    return await call(() => signal?.throwIfAborted());
  } catch (e) {
    if (signal?.aborted) throw signal.reason;
    throw e;
  }
}

/** The WebGPU device: opens it, loads models. */
export class Engine {
  #raw;
  #model = null;

  constructor(raw) {
    this.#raw = raw;
    this.adapter = raw.adapter();
    this.chat = { completions: { create: async (params, options) => this.#current().chat.completions.create(params, options) } };
  }

  /** Loads the wasm module (once per page; `wasm`: where keel_bg.wasm is, by default beside this file) and opens the adapter. */
  static async open({ wasm } = {}) {
    ready ??= init(wasm ? { module_or_path: wasm } : undefined);
    await ready;
    return new Engine(await RawEngine.open());
  }

  /** The model last loaded (for engine.chat.completions), or null once it was freed. */
  get model() {
    return this.#model && !this.#model.freed ? this.#model : null;
  }

  #current() {
    const model = this.model;
    if (!model) throw new Error('no model is loaded (engine.load(...) first)');
    return model;
  }

  /** Loads a model from a server folder ({url, files: [{name, size}]}) or local files. */
  async load(source, { name, onProgress } = {}) {
    const loader = this.#raw.loader();
    try {
      await fill(loader, this.adapter.max_storage_buffer_binding_size, source, onProgress ?? (() => {}));
    } catch (e) {
      loader.free(); // with the GPU buffers it was filling
      throw e;
    }
    const label = name ?? (source.url ? source.url.replace(/\/$/, '').split('/').pop() : 'local files');
    this.#model = new Model(this.#raw.load(loader), decodeURIComponent(label));
    return this.#model;
  }
}

let completions = 0;

/** A loaded model: its weights on the GPU until free(). */
export class Model {
  #raw;

  constructor(raw, name) {
    this.#raw = raw;
    this.name = name;
    this.info = raw.info();
    this.freed = false;
    this.chat = { completions: { create: (params, options) => this.#createCompletion(params, options) } };
  }

  #live() {
    if (this.freed) throw new Error(`this model (${this.name}) was freed (model.free()); load it again to use it`);
    return this.#raw;
  }

  /** Bytes of GPU buffers the model holds; 0 after free(). */
  get gpuBytes() {
    return this.freed ? 0 : this.#raw.gpu_bytes();
  }

  /** Gives the GPU buffers back (a running generation keeps them until it ends); later calls are refused. */
  free() {
    if (this.freed) return;
    this.#raw.release();
    this.freed = true;
  }

  /** `messages` through the model's chat template: {text, ids}. */
  chatPrompt(messages) {
    return this.#live().chat_prompt(messages);
  }

  /** Generates from a prompt (or chat messages); resolves to {prompt_ids, ids, text, finish_reason}. */
  async generate({ signal, onToken, ...request }) {
    const raw = this.#live();
    return abortable(signal, (check) => raw.generate(request, (token) => {
      check();
      onToken?.(token);
    }));
  }

  /** The last LoRA fine-tune's adapter in PEFT's format: the two files of its folder, by name. */
  adapterFiles() {
    const { config, weights } = this.#live().adapter_files(this.name);
    return { 'adapter_config.json': config, 'adapter_model.safetensors': weights };
  }

  /** Fine-tunes every weight on `text`, or LoRA adapters (`lora: {rank, alpha, targets}`); resolves to the losses. Generation then uses the trained weights (LoRA's merged). */
  async finetune({ signal, onStep, ...request }) {
    const raw = this.#live();
    return abortable(signal, (check) => raw.finetune(request, (step, loss) => {
      check();
      onStep?.(step, loss);
    }));
  }

  // OpenAI's chat.completions.create: resolves to a chat.completion object, or with
  // stream: true to an async iterable of chat.completion.chunk objects. `signal` in the params
  // or the options.
  async #createCompletion(params, options = {}) {
    const { messages, stream = false, max_tokens, max_completion_tokens, temperature, top_p, seed,
      presence_penalty, frequency_penalty, n = 1, signal = options.signal, keel = {}, model: _model,
      stream_options: _streamOptions, ...rest } = params ?? {};
    const unsupported = Object.keys(rest);
    if (unsupported.length) throw new Error(`chat.completions.create: ${unsupported.join(', ')} not supported`);
    if (n !== 1) throw new Error(`chat.completions.create: n must be 1, not ${n}`);
    const { lcm, ...sampling } = keel;
    const request = { messages, max_tokens: max_completion_tokens ?? max_tokens ?? 256, temperature, top_p, seed,
      presence_penalty, frequency_penalty, lcm, ...sampling };
    for (const k of Object.keys(request)) if (request[k] === undefined) delete request[k];
    const head = { id: `chatcmpl-keel-${++completions}`, created: Math.floor(Date.now() / 1000), model: this.name };
    const usage = (r) => ({ prompt_tokens: r.prompt_ids.length, completion_tokens: r.ids.length,
      total_tokens: r.prompt_ids.length + r.ids.length });
    if (!stream) {
      return this.generate({ ...request, signal }).then((r) => ({
        ...head, object: 'chat.completion',
        choices: [{ index: 0, message: { role: 'assistant', content: r.text }, logprobs: null, finish_reason: r.finish_reason }],
        usage: usage(r), keel: { ids: r.ids, prompt_ids: r.prompt_ids },
      }));
    }
    return new ChatCompletionStream((onChunk, streamSignal) => {
      const chunk = (delta, finish_reason = null) => ({ ...head, object: 'chat.completion.chunk',
        choices: [{ index: 0, delta, logprobs: null, finish_reason }] });
      onChunk(chunk({ role: 'assistant', content: '' }));
      return this.generate({ ...request, signal: streamSignal, onToken: (t) => {
        if (!t.stop) onChunk(chunk({ content: t.text }));
      } }).then((r) => onChunk({ ...chunk({}, r.finish_reason), usage: usage(r), keel: { ids: r.ids, prompt_ids: r.prompt_ids } }));
    }, signal);
  }
}

/** The chunks of a streamed chat completion, as they come; `abort()` (or breaking out of the loop) stops the generation. */
export class ChatCompletionStream {
  #queue = [];
  #wake = null;
  #done = false;
  #error = null;

  constructor(run, signal) {
    this.controller = new AbortController();
    signal?.addEventListener('abort', () => this.controller.abort(signal.reason), { once: true });
    if (signal?.aborted) this.controller.abort(signal.reason);
    const push = (chunk) => {
      this.#queue.push(chunk);
      this.#wake?.();
    };
    Promise.resolve()
      .then(() => run(push, this.controller.signal))
      .catch((e) => { this.#error = e; })
      .finally(() => {
        this.#done = true;
        this.#wake?.();
      });
  }

  abort(reason) {
    this.controller.abort(reason);
  }

  async *[Symbol.asyncIterator]() {
    try {
      for (;;) {
        if (this.#queue.length) {
          yield this.#queue.shift();
        } else if (this.#done) {
          if (this.#error) throw this.#error;
          return;
        } else {
          await new Promise((wake) => { this.#wake = wake; });
          this.#wake = null;
        }
      }
    } finally {
      if (!this.#done) this.abort();
    }
  }
}
