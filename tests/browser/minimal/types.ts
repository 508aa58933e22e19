// Type-checked (tsc --strict --noEmit) against the package's index.d.ts by tests/browser.rs,
// resolved through node_modules/keel-webgpu's package.json as an application would: the API as
// used, and misuses the declarations must refuse (each @ts-expect-error fails if they accept it).
import { Engine, type ChatCompletion, type ChatCompletionChunk, type Generation, type Token } from 'keel-webgpu';

export async function use(files: FileList): Promise<string> {
  const engine = await Engine.open();
  const limit: number = engine.adapter.max_storage_buffer_binding_size;
  const model = await engine.load({ url: 'models/stories260k/', files: [{ name: 'config.json', size: 1 }] });
  const local = await engine.load(files, { name: 'local', onProgress: (text: string) => text.length });
  const controller = new AbortController();
  const tokens: Token[] = [];
  const r: Generation = await model.generate({ prompt: 'Once', max_tokens: 8, temperature: 0, signal: controller.signal,
    lcm: { gamma: 0.05, layers: [1, 2], space: 'normalized' }, onToken: (t) => tokens.push(t) });
  const losses: number[] = await local.finetune({ text: 'x', steps: 1, lr: 1e-3, batch: 1, seq_len: 8, onStep: (_s, loss) => loss });
  await local.finetune({ text: 'x', steps: 1, lr: 1e-3, batch: 1, seq_len: 8, lora: { rank: 4, targets: 'q,v' } });
  const adapter: Uint8Array = local.adapterFiles()['adapter_model.safetensors'];
  // @ts-expect-error LoRA needs a rank
  await local.finetune({ text: 'x', steps: 1, lr: 1e-3, batch: 1, seq_len: 8, lora: { alpha: 8 } });
  const done: ChatCompletion = await engine.chat.completions.create({ messages: [{ role: 'user', content: 'Hi' }], max_tokens: 4 });
  const stream = await model.chat.completions.create({ messages: [{ role: 'user', content: 'Hi' }], stream: true,
    keel: { lcm: { gamma: 0.05 }, top_k: 40 } });
  let text = '';
  for await (const chunk of stream) {
    const c: ChatCompletionChunk = chunk;
    text += c.choices[0].delta.content ?? '';
  }
  stream.abort();
  const bytes: number = model.gpuBytes;
  model.free();
  // @ts-expect-error max_tokens is required
  await model.generate({ prompt: 'Once' });
  // @ts-expect-error a chat completion needs messages
  await engine.chat.completions.create({ max_tokens: 4 });
  // @ts-expect-error a non-streamed completion is not iterable
  for await (const _ of done) text += '';
  // @ts-expect-error LCM's space is raw or normalized
  await model.generate({ prompt: 'Once', max_tokens: 1, lcm: { space: 'latent' } });
  return `${limit} ${r.finish_reason} ${losses.length} ${done.choices[0].message.content} ${text} ${bytes} ${adapter.length}`;
}
