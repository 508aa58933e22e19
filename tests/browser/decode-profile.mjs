// Where the page's decode time goes (docs/web.md, "Speed: page vs native"): drives the demo
// page in headless Chromium (as run.mjs does) through a warm-up and `rounds` greedy generations of
// `max_tokens` tokens and, around each, counts and times with performance.now() every WebGPU
// call the page makes (submits, encoding, the map read-backs: from mapAsync to its promise
// resolving) and the gaps between tokens. Not a test: `keel serve --model M` first, then
//
//   node tests/browser/decode-profile.mjs '{"url": "http://127.0.0.1:8080/", "model": "stories260k",
//     "prompt": "Once upon a time", "max_tokens": 32, "rounds": 5}'
//
// Prints a JSON array, one object per round (round 0 compiles the pipelines): decode tok/s as
// the page shows it; per generated token the calls' counts and milliseconds and the CPU
// milliseconds of each kind of Chromium process; in the last round, V8's self time per function.
import { launch } from './chromium.mjs';
import { readdirSync, readFileSync } from 'node:fs';

const s = JSON.parse(process.argv[2]);
const { browser, profile, close } = await launch();
await browser.addInitScript(() => {
  if (!globalThis.GPUDevice) return;
  const stats = {};
  const add = (name, ms) => {
    const s = (stats[name] ??= { n: 0, ms: 0 });
    s.n += 1;
    s.ms += ms;
  };
  const wrap = (proto, names, group) => {
    for (const name of names) {
      const f = proto[name];
      proto[name] = function (...args) {
        const t0 = performance.now();
        try {
          return f.apply(this, args);
        } finally {
          add(`${group}.${name}`, performance.now() - t0);
        }
      };
    }
  };
  wrap(GPUDevice.prototype, ['createCommandEncoder', 'createBuffer', 'createBindGroup'], 'device');
  wrap(GPUQueue.prototype, ['submit', 'writeBuffer'], 'queue');
  wrap(GPUCommandEncoder.prototype, ['beginComputePass', 'copyBufferToBuffer', 'clearBuffer', 'finish'], 'encoder');
  wrap(GPUComputePassEncoder.prototype, ['setPipeline', 'setBindGroup', 'dispatchWorkgroups', 'end'], 'pass');
  wrap(GPUBuffer.prototype, ['getMappedRange', 'unmap'], 'buffer');
  const mapAsync = GPUBuffer.prototype.mapAsync;
  GPUBuffer.prototype.mapAsync = function (...args) {
    const t0 = performance.now();
    const p = mapAsync.apply(this, args);
    add('buffer.mapAsync (call)', performance.now() - t0);
    return p.then((v) => {
      add('buffer.mapAsync (to resolved)', performance.now() - t0);
      return v;
    });
  };
  globalThis.gpuStats = () => {
    const copy = JSON.parse(JSON.stringify(stats));
    for (const k of Object.keys(stats)) delete stats[k];
    return copy;
  };
});
// CPU seconds (user + system) of this browser's processes by kind (browser, renderer, gpu-process,
// ...), from /proc: on a CPU adapter the GPU process runs the kernels, so its share against the
// renderer's says what the page itself costs.
function cpuByKind() {
  const procs = [];
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // Chromium rewrites its children's command lines into one space-separated string.
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split(/[\0 ]/);
      procs.push({ pid: +pid, ppid: +f[1], ticks: +f[11] + +f[12], cmd });
    } catch { /* gone */ }
  }
  const root = procs.find((p) => p.cmd.some((a) => a === `--user-data-dir=${profile}`) && !p.cmd.some((a) => a.startsWith('--type=')));
  const mine = new Set([root.pid]);
  for (let grew = true; grew;) {
    grew = false;
    for (const p of procs) if (!mine.has(p.pid) && mine.has(p.ppid)) { mine.add(p.pid); grew = true; }
  }
  const hz = 100;
  const out = {};
  for (const p of procs.filter((p) => mine.has(p.pid))) {
    const kind = (p.cmd.find((a) => a.startsWith('--type=')) ?? '--type=browser').slice(7);
    out[kind] = (out[kind] ?? 0) + p.ticks / hz;
  }
  return out;
}
const rounds = [];
try {
  const page = browser.pages()[0] ?? await browser.newPage();
  const minutes = 60_000;
  await page.goto(s.url);
  await page.locator(`button[data-model="${s.model}"]`).click({ timeout: 2 * minutes });
  await page.waitForFunction((m) => document.getElementById('model-info').dataset.loaded === m, s.model,
    { timeout: 2 * minutes });
  await page.fill('#prompt', s.prompt);
  await page.fill('#max-tokens', String(s.max_tokens));
  await page.fill('#temperature', '0');
  await page.setChecked('#lcm-on', false);
  // Token arrival times, seen by a MutationObserver on the output (the page appends each token's text).
  await page.evaluate(() => {
    globalThis.arrivals = [];
    new MutationObserver(() => globalThis.arrivals.push(performance.now()))
      .observe(document.getElementById('out-a'), { childList: true, characterData: true, subtree: true });
  });
  for (let r = 0; r <= s.rounds; r++) {
    await page.evaluate(() => { globalThis.gpuStats(); globalThis.arrivals = []; });
    // The renderer's own time, sampled by V8's profiler (in the last round only): self time per function.
    const cdp = r === s.rounds ? await browser.newCDPSession(page) : null;
    if (cdp) {
      await cdp.send('Profiler.enable');
      await cdp.send('Profiler.setSamplingInterval', { interval: 200 });
      await cdp.send('Profiler.start');
    }
    const cpu0 = cpuByKind();
    await page.click('#generate');
    await page.waitForFunction(() => document.getElementById('outputs').dataset.done, null, { timeout: 5 * minutes });
    const got = await page.evaluate(() => ({ stats: globalThis.gpuStats(), arrivals: globalThis.arrivals,
      ids: JSON.parse(document.getElementById('out-a').dataset.ids) }));
    const cpu1 = cpuByKind();
    let top = null;
    if (cdp) {
      const { profile: p } = await cdp.send('Profiler.stop');
      const self = new Map();
      const byId = new Map(p.nodes.map((n) => [n.id, n]));
      const dt = new Map();
      p.samples.forEach((id, i) => dt.set(id, (dt.get(id) ?? 0) + (p.timeDeltas[i] ?? 0)));
      for (const [id, us] of dt) {
        const f = byId.get(id).callFrame;
        const name = `${f.functionName || '(anonymous)'} ${f.url.split('/').pop()}`;
        self.set(name, (self.get(name) ?? 0) + us);
      }
      top = [...self].sort((a, b) => b[1] - a[1]).slice(0, 25).map(([k, us]) => [k, +(us / 1000).toFixed(1)]);
    }
    const tps = Number(await page.locator('#speed').getAttribute('data-decode-tps'));
    const tokens = got.ids.length;
    const per = Object.fromEntries(Object.entries(got.stats).sort()
      .map(([k, v]) => [k, { per_token: +(v.n / tokens).toFixed(2), ms_per_token: +(v.ms / tokens).toFixed(3) }]));
    const gaps = got.arrivals.slice(1).map((t, i) => t - got.arrivals[i]).sort((a, b) => a - b);
    rounds.push({ round: r, warm: r > 0, decode_tps: tps, tokens,
      gap_ms: gaps.length ? { median: +gaps[gaps.length >> 1].toFixed(2), max: +gaps[gaps.length - 1].toFixed(2) } : null,
      cpu_ms_per_token: Object.fromEntries(Object.keys(cpu1)
        .map((k) => [k, +((cpu1[k] - (cpu0[k] ?? 0)) * 1000 / tokens).toFixed(1)])),
      calls: per, renderer_self_ms: top });
  }
} finally {
  await close();
}
console.log(JSON.stringify(rounds, null, 1));
