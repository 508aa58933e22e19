#!/usr/bin/env python3
"""Independent float64 NumPy reference of tiny-gpt2's golden `constriction` runs `cgfm` and `all`.

GPT-2 forward and hand-written backward (Conv1D weights stored [in, out], fused c_attn with bias,
learned positions, LayerNorm with bias, gelu_new, tied wte), the alignment loss, CGFM, HGC on the
gradient, the adaptive step size and AdamW, exactly as methods.md sections 2-3 and
../shared/golden/README.md state them, on the golden batch (10 steps).

    scripts/cgfm_gpt2_reference.py            # methods.md: G_global[i, o] = sum_b T xbar_b[i] dbar_b[o]
    scripts/cgfm_gpt2_reference.py --golden   # the golden's reading: the same, but for a *square*
                                              # Conv1D weight (attn.c_proj, 64 x 64) the global part
                                              # is added transposed (T dbar xbar^T in Conv1D's layout)

The first reproduces Keel (tests/train_golden.rs keeps its numbers); the second reproduces the
golden files' numbers to ~1e-7, which is how the golden's tiny-gpt2 `cgfm`/`all` runs were
explained (docs/finetune.md). Needs only numpy. KEEL_SHARED overrides ../shared.
"""
import json
import os
import struct
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("KEEL_SHARED", os.path.join(ROOT, "..", "shared"))
KINDS = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
C, H, D, L = 64, 4, 16, 3
GELU_K = np.sqrt(2 / np.pi)


def load_weights():
    raw = open(os.path.join(SHARED, "models/tiny-gpt2/model.safetensors"), "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header, base, params = json.loads(raw[8 : 8 + n]), 8 + n, {}
    for name, v in header.items():
        if name != "__metadata__":
            a, b = v["data_offsets"]
            w = np.frombuffer(raw[base + a : base + b], dtype=np.float16).reshape(v["shape"])
            params[name.replace("transformer.", "")] = w.astype(np.float64)
    return params


def layer_norm(x, w, b):
    xc = x - x.mean(-1, keepdims=True)
    r = 1 / np.sqrt((xc**2).mean(-1, keepdims=True) + 1e-5)
    return xc * r * w + b, (xc * r, r)


def layer_norm_back(dy, cache, w):
    xh, r = cache
    dxh = dy * w
    dx = r * (dxh - dxh.mean(-1, keepdims=True) - xh * (dxh * xh).mean(-1, keepdims=True))
    return dx, (dy * xh).sum((0, 1)), dy.sum((0, 1))


def gelu(x):
    return 0.5 * x * (1 + np.tanh(GELU_K * (x + 0.044715 * x**3)))


def gelu_back(x, dy):
    t = np.tanh(GELU_K * (x + 0.044715 * x**3))
    return dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * GELU_K * (1 + 3 * 0.044715 * x * x))


def forward_backward(p, ids, tgt, beta):
    """Cross-entropy, alignment loss, every parameter's gradient, and each linear weight's
    (input, output gradient) for the split."""
    bsz, t = ids.shape
    mask = np.triu(np.ones((t, t)), 1) > 0
    g = {k: np.zeros_like(v) for k, v in p.items()}
    lin, caches, hs = {}, [], []
    h = p["wte.weight"][ids] + p["wpe.weight"][:t][None]
    for l in range(L):
        pre, c = f"h.{l}.", {}
        a, c["ln1"] = layer_norm(h, p[pre + "ln_1.weight"], p[pre + "ln_1.bias"])
        c["a"] = a
        qkv = a @ p[pre + "attn.c_attn.weight"] + p[pre + "attn.c_attn.bias"]
        q, k, v = [qkv[..., i * C : (i + 1) * C].reshape(bsz, t, H, D).transpose(0, 2, 1, 3) for i in range(3)]
        s = np.where(mask, -1e30, q @ k.transpose(0, 1, 3, 2) / np.sqrt(D))
        e = np.exp(s - s.max(-1, keepdims=True))
        att = e / e.sum(-1, keepdims=True)
        o = (att @ v).transpose(0, 2, 1, 3).reshape(bsz, t, C)
        c.update(q=q, k=k, v=v, att=att, o=o)
        h = h + o @ p[pre + "attn.c_proj.weight"] + p[pre + "attn.c_proj.bias"]
        m, c["ln2"] = layer_norm(h, p[pre + "ln_2.weight"], p[pre + "ln_2.bias"])
        c["m"] = m
        c["f"] = m @ p[pre + "mlp.c_fc.weight"] + p[pre + "mlp.c_fc.bias"]
        c["g"] = gelu(c["f"])
        h = h + c["g"] @ p[pre + "mlp.c_proj.weight"] + p[pre + "mlp.c_proj.bias"]
        caches.append(c)
        hs.append(h)
    hf, cf = layer_norm(h, p["ln_f.weight"], p["ln_f.bias"])
    logits = hf @ p["wte.weight"].T
    lg = logits - logits.max(-1, keepdims=True)
    lp = lg - np.log(np.exp(lg).sum(-1))[..., None]
    ce = -np.take_along_axis(lp, tgt[..., None], -1).mean()
    # alignment loss: beta * sum_{l>=1} |n(h_l) - n(h_{l-1})|^2 / (tokens * hidden)
    align, dhs = 0.0, [np.zeros_like(x) for x in hs]
    if beta > 0:
        rs = [1 / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) for x in hs]
        ns = [x * r for x, r in zip(hs, rs)]
        dn = [np.zeros_like(x) for x in hs]
        scale = bsz * t * C
        for l in range(1, L):
            d = ns[l] - ns[l - 1]
            align += beta * (d * d).sum() / scale
            dn[l] += 2 * beta * d / scale
            dn[l - 1] -= 2 * beta * d / scale
        for l in range(L):
            x, r = hs[l], rs[l]
            dhs[l] = r * (dn[l] - x * r * r * (dn[l] * x).mean(-1, keepdims=True))
    dl = np.exp(lp)
    np.put_along_axis(dl, tgt[..., None], np.take_along_axis(dl, tgt[..., None], -1) - 1, -1)
    dl /= bsz * t
    g["wte.weight"] += dl.reshape(-1, dl.shape[-1]).T @ hf.reshape(-1, C)
    dh, g["ln_f.weight"], g["ln_f.bias"] = layer_norm_back(dl @ p["wte.weight"], cf, p["ln_f.weight"])
    for l in reversed(range(L)):
        pre, c = f"h.{l}.", caches[l]
        dh = dh + dhs[l]

        def linear_back(name, x, dy):
            lin[pre + name] = (x, dy)
            g[pre + name + ".weight"] += np.einsum("bti,bto->io", x, dy)
            g[pre + name + ".bias"] += dy.sum((0, 1))
            return dy @ p[pre + name + ".weight"].T

        dm = linear_back("mlp.c_fc", c["m"], gelu_back(c["f"], linear_back("mlp.c_proj", c["g"], dh)))
        dx, g[pre + "ln_2.weight"], g[pre + "ln_2.bias"] = layer_norm_back(dm, c["ln2"], p[pre + "ln_2.weight"])
        dh = dh + dx
        do = linear_back("attn.c_proj", c["o"], dh).reshape(bsz, t, H, D).transpose(0, 2, 1, 3)
        att, q, k, v = c["att"], c["q"], c["k"], c["v"]
        dv = att.transpose(0, 1, 3, 2) @ do
        datt = do @ v.transpose(0, 1, 3, 2)
        ds = att * (datt - (datt * att).sum(-1, keepdims=True)) / np.sqrt(D)
        dqkv = np.concatenate(
            [x.transpose(0, 2, 1, 3).reshape(bsz, t, C) for x in (ds @ k, ds.transpose(0, 1, 3, 2) @ q, dv)], -1
        )
        da = linear_back("attn.c_attn", c["a"], dqkv)
        dx, g[pre + "ln_1.weight"], g[pre + "ln_1.bias"] = layer_norm_back(da, c["ln1"], p[pre + "ln_1.weight"])
        dh = dh + dx
    np.add.at(g["wte.weight"], ids, dh)
    g["wpe.weight"][:t] += dh.sum(0)
    return ce, align, g, lin


def cgfm(g, lin, local, glob, golden_reading):
    t = next(iter(lin.values()))[0].shape[1]
    for key, (x, dy) in lin.items():
        # Conv1D layout [in, out]: G_global[i, o] = sum_b T xbar_b[i] dbar_b[o]
        gg = sum(t * np.outer(x[b].mean(0), dy[b].mean(0)) for b in range(x.shape[0]))
        if golden_reading and gg.shape[0] == gg.shape[1]:
            gg = gg.T
        w = key + ".weight"
        g[w] = local * (g[w] - gg) + glob * gg


def hgc(g, alpha, mu, slope):
    lam, raw = {}, {k: v.copy() for k, v in g.items()}
    for kind in KINDS:
        lam[kind] = [1.0]
        for l in range(1, L):
            gl, gp = raw[f"h.{l}.{kind}.weight"], raw[f"h.{l - 1}.{kind}.weight"]
            lm = 1 / (1 + alpha * (1 + slope * l / L) * ((gl - gp) ** 2).sum())
            lam[kind].append(lm)
            g[f"h.{l}.{kind}.weight"] = lm * ((1 - mu) * gl + mu * gp)
    return lam


def run(golden, name, golden_reading):
    cfg, opt = golden["constriction"]["runs"][name]["config"], golden["train"]["optimizer"]
    ids, tgt = np.array(golden["train"]["input_ids"]), np.array(golden["train"]["target_ids"])
    p = load_weights()
    m1 = {k: np.zeros_like(v) for k, v in p.items()}
    m2 = {k: np.zeros_like(v) for k, v in p.items()}
    ref, out = None, []
    for s in range(10):
        ce, align, g, lin = forward_backward(p, ids, tgt, cfg.get("align_beta", 0.0))
        cgfm(g, lin, cfg["cgfm_local"], cfg["cgfm_global"], golden_reading)
        lam = None
        if "hgc_alpha" in cfg:
            lam = hgc(g, cfg["hgc_alpha"], cfg["hgc_mu"], cfg["hgc_depth_slope"])
        norm = np.sqrt(sum((v**2).sum() for v in g.values()))  # tied wte once
        ref = norm if ref is None else ref
        lr = min(max(opt["lr"] * (1 + norm / ref), cfg["lr_min"]), cfg["lr_max"])
        out.append((ce, align, lr, lam))
        b1, b2 = opt["beta1"], opt["beta2"]
        for k in p:
            m1[k] = b1 * m1[k] + (1 - b1) * g[k]
            m2[k] = b2 * m2[k] + (1 - b2) * g[k] ** 2
            upd = (m1[k] / (1 - b1 ** (s + 1))) / (np.sqrt(m2[k] / (1 - b2 ** (s + 1))) + opt["eps"])
            p[k] = p[k] * (1 - lr * opt["weight_decay"]) - lr * upd
    return out


def main():
    golden_reading = "--golden" in sys.argv[1:]
    golden = json.load(open(os.path.join(SHARED, "golden/tiny-gpt2.json")))
    print("reading:", "golden's (square Conv1D global part transposed)" if golden_reading else "methods.md")
    for name in ["cgfm", "all"]:
        want, worst = golden["constriction"]["runs"][name], 0.0
        out = run(golden, name, golden_reading)
        print(f"\n{name}: step  ce (golden)  align (golden)  lr (golden)")
        for s, (ce, align, lr, _) in enumerate(out):
            wa = want.get("align_losses", [0.0] * 10)[s]
            print(f"{s} {ce:.9f} ({want['ce_losses'][s]:.9f}) {align:.9f} ({wa:.9f}) {lr:.9e} ({want['lrs'][s]:.9e})")
            worst = max(worst, abs(ce / want["ce_losses"][s] - 1), abs(lr / want["lrs"][s] - 1))
        if out[0][3]:
            for kind, lam in out[0][3].items():
                print(f"step-0 lambda {kind}: {[f'{x:.9f}' for x in lam]} (golden {want['step0_lambda'][kind]})")
        print(f"largest relative difference from the golden (ce, lr): {worst:.2e}")


if __name__ == "__main__":
    main()
