// Keel in the browser: declarations for index.js (the npm package's entry).

/** The adapter Keel opened and the limits it got. */
export interface AdapterInfo {
  name: string;
  backend: string;
  device_type: string;
  driver: string;
  shader_f16: boolean;
  max_buffer_size: number;
  max_storage_buffer_binding_size: number;
  max_storage_buffers_per_shader_stage: number;
  max_compute_invocations_per_workgroup: number;
  max_compute_workgroup_storage_size: number;
}

/** A model's sizes and names. */
export interface ModelInfo {
  arch: string;
  layers: number;
  hidden: number;
  vocab: number;
  context: number;
  params: number;
  eos: number[];
  /** Whether the model has a chat template (tokenizer_config.json's, or the GGUF's). */
  chat_template: boolean;
}

/** A model folder on a server that answers HTTP Range requests (`keel serve` does). */
export interface ServerModel {
  /** The folder's URL, e.g. `models/stories260k/`. */
  url: string;
  /** Its files with their sizes in bytes (`keel serve`'s models.json lists them). */
  files: { name: string; size: number }[];
}

export interface LoadOptions {
  /** The model's name in completions (default: the folder's name, or "local files"). */
  name?: string;
  /** Progress in words ("Loading model.safetensors: tensor 3 of 12"). */
  onProgress?: (text: string) => void;
}

/** Latent convergence modulation: the keys of Keel's `lcm_config` (docs/lcm.md). */
export interface LcmSettings {
  gamma?: number;
  rho?: number;
  tau?: number;
  kappa?: number;
  /** Block indices (default: the upper half). */
  layers?: number[];
  /** Multi-scale anchors: [rho, gamma] pairs. */
  scales?: [number, number][];
  sink?: number;
  space?: 'raw' | 'normalized';
}

/** Sampler settings; absent ones take the CLI's defaults: the model's generation_config.json, else temperature 1 and no top-k/top-p. */
export interface SamplingOptions {
  /** 0: greedy. */
  temperature?: number;
  top_k?: number;
  top_p?: number;
  min_p?: number;
  repetition_penalty?: number;
  presence_penalty?: number;
  frequency_penalty?: number;
  seed?: number;
}

/** An OpenAI-style chat message. */
export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool' | (string & {});
  content: string | null | { type: string; text?: string }[];
  [key: string]: unknown;
}

/** One generated token as it comes. */
export interface Token {
  id: number;
  /** Its text (empty for a stop token). */
  text: string;
  /** Entropy of the distribution it was picked from (nats). */
  entropy: number;
  /** Its log-probability under that distribution (nats). */
  logprob: number;
  /** Whether it is a stop token (EOS, or the chat template's end of turn). */
  stop: boolean;
}

export interface GenerateOptions extends SamplingOptions {
  /** Text to continue (encoded as `keel generate --prompt` does); or give `messages`. */
  prompt?: string;
  /** A chat, rendered with the model's template (as `keel generate --messages`). */
  messages?: ChatMessage[];
  /** A tool list for the chat template. */
  tools?: unknown[];
  max_tokens: number;
  lcm?: LcmSettings | null;
  /** Stops the generation (within a token); the promise then rejects with the signal's reason. */
  signal?: AbortSignal;
  onToken?: (token: Token) => void;
}

export interface Generation {
  prompt_ids: number[];
  /** The new tokens, a stop token included. */
  ids: number[];
  /** Their text, without the stop token. */
  text: string;
  finish_reason: 'stop' | 'length';
}

export interface FinetuneOptions {
  text: string;
  steps: number;
  lr: number;
  batch: number;
  seq_len: number;
  /** LoRA adapters instead of every weight, as `keel finetune --lora-rank R --lora-alpha A --lora-targets T`
   * (alpha: default 2 × rank; targets: "q,v" (default), any of q,k,v,o,gate,up,down, or "all"). Generation
   * then uses the loaded weights with the adapter merged; the adapter is `adapterFiles()`. */
  lora?: { rank: number; alpha?: number; targets?: string };
  /** Stops after the current step; the model keeps its weights; the promise rejects with the reason. */
  signal?: AbortSignal;
  onStep?: (step: number, loss: number) => void;
}

/** OpenAI's chat.completions.create parameters that Keel honours. */
export interface ChatCompletionCreateParams {
  messages: ChatMessage[];
  /** Accepted and ignored: the completion comes from the engine's (or this) model. */
  model?: string;
  stream?: boolean;
  stream_options?: unknown;
  max_tokens?: number;
  max_completion_tokens?: number;
  /** Default: the model's generation_config.json, else 1. */
  temperature?: number;
  top_p?: number;
  seed?: number;
  presence_penalty?: number;
  frequency_penalty?: number;
  n?: 1;
  signal?: AbortSignal;
  /** Keel's own settings: LCM and the samplers OpenAI lacks. */
  keel?: { lcm?: LcmSettings | null; top_k?: number; min_p?: number; repetition_penalty?: number };
}

export interface ChatCompletionUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: {
    index: number;
    message: { role: 'assistant'; content: string };
    logprobs: null;
    finish_reason: 'stop' | 'length';
  }[];
  usage: ChatCompletionUsage;
  /** The token ids of the prompt and the reply. */
  keel: { ids: number[]; prompt_ids: number[] };
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  choices: {
    index: number;
    delta: { role?: 'assistant'; content?: string };
    logprobs: null;
    finish_reason: 'stop' | 'length' | null;
  }[];
  /** On the last chunk only. */
  usage?: ChatCompletionUsage;
  /** On the last chunk only. */
  keel?: { ids: number[]; prompt_ids: number[] };
}

/** The chunks of a streamed completion; `abort()` or leaving the loop stops the generation. */
export declare class ChatCompletionStream implements AsyncIterable<ChatCompletionChunk> {
  readonly controller: AbortController;
  abort(reason?: unknown): void;
  [Symbol.asyncIterator](): AsyncIterator<ChatCompletionChunk>;
}

export interface ChatCompletions {
  create(params: ChatCompletionCreateParams & { stream?: false }, options?: { signal?: AbortSignal }): Promise<ChatCompletion>;
  create(params: ChatCompletionCreateParams & { stream: true }, options?: { signal?: AbortSignal }): Promise<ChatCompletionStream>;
  create(params: ChatCompletionCreateParams, options?: { signal?: AbortSignal }): Promise<ChatCompletion | ChatCompletionStream>;
}

/** Whether a file of a model's folder is one Keel reads. */
export declare function isModelFile(name: string): boolean;

/** The WebGPU device. */
export declare class Engine {
  private constructor();
  /** Loads the wasm module (once per page; `wasm`: where keel_bg.wasm is, by default beside index.js) and opens the adapter. */
  static open(options?: { wasm?: string | URL | Response | BufferSource | WebAssembly.Module }): Promise<Engine>;
  readonly adapter: AdapterInfo;
  /** The model last loaded, or null once it was freed. */
  readonly model: Model | null;
  /** Loads a model from a server folder or local files (File objects, e.g. an input's FileList). */
  load(source: ServerModel | Iterable<File> | ArrayLike<File>, options?: LoadOptions): Promise<Model>;
  /** Chat completions from the model last loaded. */
  readonly chat: { completions: ChatCompletions };
}

/** A loaded model: its weights on the GPU until free(). */
export declare class Model {
  private constructor();
  readonly name: string;
  readonly info: ModelInfo;
  readonly freed: boolean;
  /** Bytes of GPU buffers the model holds (as loaded and fine-tuned); 0 after free(). */
  readonly gpuBytes: number;
  /** Gives the GPU buffers back; every later call throws. */
  free(): void;
  /** `messages` through the model's chat template (as `keel template --json`). */
  chatPrompt(messages: ChatMessage[]): { text: string; ids: number[] };
  generate(options: GenerateOptions): Promise<Generation>;
  /** Fine-tunes every weight, or LoRA adapters (AdamW, the CLI's defaults); resolves to the losses. */
  finetune(options: FinetuneOptions): Promise<number[]>;
  /** The last LoRA fine-tune's adapter in PEFT's format (`keel merge --lora DIR` reads the folder). */
  adapterFiles(): { 'adapter_config.json': string; 'adapter_model.safetensors': Uint8Array };
  readonly chat: { completions: ChatCompletions };
}
