// Log-softmax statistics of logits as partials that merge in any order, and greedy decoding's
// pick from them: stats.wgsl's two passes and the LM head's last workgroups (matvec.wgsl with
// PICK, natively) run the same functions, so both give the same bits. The includer declares
// WG (64 threads), `partials` (vec4 per part: m, s, t, argmax bits) and `fn logit(at: u32) -> f32`,
// and with PICK the bindings `ids`, `rows` and `out` (see stats.wgsl).
// A partial is (max m, argmax, s = Σ exp(z - m), t = Σ exp(z - m)·(z - m)). Rescaling to a
// common max M gives s·e^(m-M) and e^(m-M)·(t + (m - M)·s). Ties of the argmax go to the lowest
// index, as torch.argmax; NaN logits are never the argmax.

// A partial: (m, s, t, argmax as bits).
struct Partial { m: f32, s: f32, t: f32, arg: u32 }

const NEG_INF: f32 = -3.0e38;
var<workgroup> red: array<Partial, WG>;

fn merge(a: Partial, b: Partial) -> Partial {
    let m = max(a.m, b.m);
    let ea = exp(a.m - m);
    let eb = exp(b.m - m);
    // The lower index wins ties; a partial that saw no number keeps NEG_INF and loses.
    var arg = a.arg;
    if (b.m > a.m || (b.m == a.m && b.arg < a.arg)) { arg = b.arg; }
    return Partial(m, a.s * ea + b.s * eb, rescaled_t(a, m, ea) + rescaled_t(b, m, eb), arg);
}

// t of a partial rescaled to the max m (e = exp(a.m - m)); zero for an empty partial, whose
// (a.m - m) may overflow.
fn rescaled_t(a: Partial, m: f32, e: f32) -> f32 {
    return select(0.0, e * (a.t + (a.m - m) * a.s), a.s > 0.0);
}

// Tree-merges the workgroup's partials; every thread gets the result.
fn workgroup_merge(v: Partial, lid: u32) -> Partial {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] = merge(red[lid], red[lid + s]); }
        workgroupBarrier();
    }
    return red[0];
}

// The partial of logits [start, end) of the row whose logit 0 is at `row_at` (argmax relative
// to the row): one pass per thread, a running partial updated by each logit, then the tree.
fn span_partial(row_at: u32, start: u32, end: u32, lid: u32) -> Partial {
    var acc = Partial(NEG_INF, 0.0, 0.0, 0xffffffffu);
    for (var i = start + lid; i < end; i += WG) {
        let z = logit(row_at + i);
        if (z > acc.m) {
            let e = exp(acc.m - z);
            acc = Partial(z, acc.s * e + 1.0, rescaled_t(acc, z, e), i);
        } else if (z <= acc.m) {  // false for NaN
            let e = exp(z - acc.m);
            acc.s += e;
            acc.t += e * (z - acc.m);
        }
    }
    return workgroup_merge(acc, lid);
}

fn to_vec4(a: Partial) -> vec4<f32> {
    return vec4<f32>(a.m, a.s, a.t, bitcast<f32>(a.arg));
}

// The merge of `n` partials from `partials[first]`.
fn merge_partials(first: u32, n: u32, lid: u32) -> Partial {
    var acc = Partial(NEG_INF, 0.0, 0.0, 0xffffffffu);
    for (var j = lid; j < n; j += WG) {
        let v = partials[first + j];
        acc = merge(acc, Partial(v.x, v.y, v.z, bitcast<u32>(v.w)));
    }
    return workgroup_merge(acc, lid);
}

#if PICK
// Greedy decoding's pick from the merged statistics `total` of the logits at 0 .. vocab, as
// sampler::argmax makes it (run by one thread): feeds it to the next step (ids[0], and row 0
// of the row table at the position after that of entry `row`) and writes [id, log-prob,
// entropy, lse] into `out` at that position.
fn write_pick(total: Partial, vocab: u32, row: u32) {
    var id = total.arg;
    if (id == 0xffffffffu) {
        // No logit above NEG_INF (rare): sampler::argmax's pick, -inf counting as a number,
        // 0 when nothing is one.
        id = 0u;
        var found = false;
        for (var i = 0u; i < vocab; i++) {
            let z = logit(i);
            let number = (bitcast<u32>(z) & 0x7fffffffu) <= 0x7f800000u;
            if (number && (!found || z > logit(id))) { id = i; found = true; }
        }
    }
    let log_s = log(total.s);
    let seq = rows[2u * row];
    let next = rows[2u * row + 1u] + 1u;
    ids[0] = id;
    rows[0] = seq;
    rows[1] = next;
    if (next < arrayLength(&out)) {
        // The pick is the max, so its log-prob is -log(s).
        out[next] = vec4<u32>(id, bitcast<u32>(-log_s), bitcast<u32>(log_s - total.t / total.s),
                              bitcast<u32>(total.m + log_s));
    }
}
#endif
