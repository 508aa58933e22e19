// The MLP's activation φ and its derivative, pasted into act.wgsl and act_backward.wgsl by
// `#include activation`: SiLU (SILU), exact GELU with erf (ERF), else GELU's tanh
// approximation (GPT-2's gelu_new, Gemma's gelu_pytorch_tanh).

const GELU_K: f32 = 0.7978845608028654;  // sqrt(2 / pi)

// Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7): WGSL has no erf.
fn erf_approx(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * abs(x));
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return sign(x) * (1.0 - poly * exp(-x * x));
}

fn phi(v: f32) -> f32 {
#if SILU
    return v / (1.0 + exp(-v));
#else
#if ERF
    return 0.5 * v * (1.0 + erf_approx(v * 0.7071067811865476));
#else
    // Clamped so tanh never sees an argument whose exp overflows (tanh is ±1 there anyway).
    let inner = clamp(GELU_K * (v + 0.044715 * v * v * v), -15.0, 15.0);
    return 0.5 * v * (1.0 + tanh(inner));
#endif
#endif
}

fn phi_grad(v: f32) -> f32 {
#if SILU
    let s = 1.0 / (1.0 + exp(-v));
    return s * (1.0 + v * (1.0 - s));
#else
#if ERF
    return 0.5 * (1.0 + erf_approx(v * 0.7071067811865476)) + v * 0.3989422804014327 * exp(-0.5 * v * v);
#else
    let t = tanh(clamp(GELU_K * (v + 0.044715 * v * v * v), -15.0, 15.0));
    return 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * GELU_K * (1.0 + 3.0 * 0.044715 * v * v);
#endif
#endif
}
