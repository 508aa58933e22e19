// Final-logit soft-capping of one logit (Gemma's `final_logit_softcapping`), pasted by
// `#include cap` into softcap.wgsl (the logits of decode, prefill and scoring) and xent.wgsl
// (training's loss, which caps each chunk's logits itself): one expression, so both give the
// same capped logits bit for bit.
fn soft_cap(z: f32, cap: f32) -> f32 {
    // Clamped so tanh never sees an argument whose exp overflows (tanh is ±1 there anyway).
    return cap * tanh(clamp(z / cap, -15.0, 15.0));
}
