// Headless Chromium as the browser scripts launch it: a profile directory of its own, removed
// by close(), and WebGPU enabled unless `webgpu` is false (Chromium as Linux users first start it).
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export async function launch({ webgpu = true, ...options } = {}) {
  const profile = mkdtempSync(join(tmpdir(), 'keel-chromium-'));
  const gpu = webgpu ? ['--enable-unsafe-webgpu', '--disable-gpu-sandbox'] : [];
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    ignoreDefaultArgs: ['--headless'],
    args: ['--headless=new', ...gpu, '--no-sandbox', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    ...options,
  });
  const close = async () => {
    await browser.close();
    rmSync(profile, { recursive: true, force: true });
  };
  return { browser, profile, close };
}
