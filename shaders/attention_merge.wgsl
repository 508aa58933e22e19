// The merge of decode attention's per-chunk results (pasted by `#include attention_merge` into
// attention_decode.wgsl's COMBINE kernel and the MERGE tail of its split kernel), which declare
// `rows`, `part`, `out` and `lse`.

// Output `i` of q head `h` of row `r` (and its lse, for i = 0): the row's chunks merged.
fn merge_chunks(r: u32, h: u32, i: u32) {
    let hd = p.head_dim;
    let seq = rows[2u * r];
    let pos = rows[2u * r + 1u];
    let n_chunks = pos / p.chunk + 1u;
    let stride = hd + 2u;
    let base = (seq * p.n_q_heads + h) * p.n_chunks * stride;
    let c_first = first_key(pos) / p.chunk;
    var m = NEG_INF;
    for (var c = c_first; c < n_chunks; c++) { m = max(m, part[base + c * stride + hd]); }
    var l = 0.0;
    var o = 0.0;
    for (var c = c_first; c < n_chunks; c++) {
        let at = base + c * stride;
        let w = exp(part[at + hd] - m);
        l += part[at + hd + 1u] * w;
        o += part[at + i] * w;
    }
    out[(r * p.n_q_heads + h) * hd + i] = o / l;
    if (i == 0u) { lse[r * p.n_q_heads + h] = m + log(l); }
}
