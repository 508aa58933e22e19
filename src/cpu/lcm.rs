//! Reference LCM scan over one sequence's states at one layer (methods.md section 1).

/// Modulates `h` (`[T, d]`, positions 0..T) in place. `scales` = (rho, gamma) per anchor.
/// Returns (sum of gates, sum of mean divergences, modulated positions).
pub fn lcm_scan(
    h: &mut [f32],
    d: usize,
    scales: &[(f32, f32)],
    (tau, kappa): (f32, f32),
    keep_norm: bool,
    normalized: bool,
    sink: usize,
) -> (f64, f64, usize) {
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let mut anchors: Vec<Vec<f64>> = Vec::new();
    let (mut gate_sum, mut div_sum, mut count) = (0.0, 0.0, 0);
    for (t, row) in h.chunks_mut(d).enumerate() {
        if t < sink {
            continue;
        }
        let hv: Vec<f64> = row.iter().map(|&x| x as f64).collect();
        let nh = norm(&hv);
        let v: Vec<f64> = if normalized { hv.iter().map(|x| x / nh).collect() } else { hv.clone() };
        if t == sink {
            anchors = vec![v; scales.len()];
            continue;
        }
        let mut out = v.clone();
        for (a, &(_, gamma)) in anchors.iter().zip(scales) {
            let cos = v.iter().zip(a).map(|(x, y)| x * y).sum::<f64>() / (norm(&v) * norm(a)).max(1e-8);
            let s = 1.0 - cos;
            let g = gamma as f64 / (1.0 + (-(kappa as f64) * (s - tau as f64)).exp());
            gate_sum += g;
            div_sum += s / scales.len() as f64;
            for i in 0..d {
                out[i] -= g * (v[i] - a[i]);
            }
        }
        count += 1;
        let no = norm(&out);
        let rescale = if keep_norm || normalized { nh / no } else { 1.0 };
        let anchor_in: Vec<f64> = out.iter().map(|x| if normalized { x / no } else { x * rescale }).collect();
        for (a, &(rho, _)) in anchors.iter_mut().zip(scales) {
            for i in 0..d {
                a[i] = rho as f64 * a[i] + (1.0 - rho as f64) * anchor_in[i];
            }
        }
        for i in 0..d {
            row[i] = (out[i] * rescale) as f32;
        }
    }
    (gate_sum, div_sum, count)
}

/// Gradient of [`lcm_scan`] (its reverse scan): `dy` holds dL/d(modulated states) and
/// becomes dL/d(input states) `h`. Divergences use the unclamped cosine.
#[allow(clippy::too_many_arguments)]
pub fn lcm_scan_backward(
    h: &[f32],
    dy: &mut [f32],
    d: usize,
    scales: &[(f32, f32)],
    (tau, kappa): (f32, f32),
    keep_norm: bool,
    normalized: bool,
    sink: usize,
) {
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let n_pos = h.len() / d;
    let k_n = scales.len();
    // The forward pass again, keeping each position's anchors before its update.
    let rows: Vec<Vec<f64>> = h.chunks(d).map(|r| r.iter().map(|&x| x as f64).collect()).collect();
    let mut history: Vec<Vec<Vec<f64>>> = vec![Vec::new(); n_pos];
    let mut anchors: Vec<Vec<f64>> = Vec::new();
    for t in sink..n_pos {
        let hv = &rows[t];
        let nh = dot(hv, hv).sqrt();
        let v: Vec<f64> = if normalized { hv.iter().map(|x| x / nh).collect() } else { hv.clone() };
        if t == sink {
            anchors = vec![v; k_n];
            continue;
        }
        history[t] = anchors.clone();
        let nv = dot(&v, &v).sqrt();
        let mut out = v.clone();
        for (a, &(_, gamma)) in anchors.iter().zip(scales) {
            let c = dot(&v, a) / (nv * dot(a, a).sqrt());
            let g = gamma as f64 / (1.0 + (-(kappa as f64) * (1.0 - c - tau as f64)).exp());
            out.iter_mut().zip(v.iter().zip(a)).for_each(|(o, (x, y))| *o -= g * (x - y));
        }
        let no = dot(&out, &out).sqrt();
        let rescale = if keep_norm || normalized { nh / no } else { 1.0 };
        let anchor_in: Vec<f64> = out.iter().map(|x| if normalized { x / no } else { x * rescale }).collect();
        for (a, &(rho, _)) in anchors.iter_mut().zip(scales) {
            a.iter_mut().zip(&anchor_in).for_each(|(a, x)| *a = rho as f64 * *a + (1.0 - rho as f64) * x);
        }
    }
    // The reverse scan, carrying the gradient of each anchor.
    let mut d_anchor = vec![vec![0.0f64; d]; k_n];
    for t in (sink..n_pos).rev() {
        let hv = &rows[t];
        let nh = dot(hv, hv).sqrt();
        let gy: Vec<f64> = dy[t * d..(t + 1) * d].iter().map(|&x| x as f64).collect();
        let v: Vec<f64> = if normalized { hv.iter().map(|x| x / nh).collect() } else { hv.clone() };
        // Gradient with respect to the working vector v (and, via the norm, h).
        let s_sum: Vec<f64> = (0..d).map(|i| d_anchor.iter().map(|da| da[i]).sum()).collect();
        let (gv, g_norm_h) = if t == sink {
            (
                s_sum.iter().zip(&gy).map(|(s, g)| s + if normalized { 0.0 } else { *g }).collect::<Vec<_>>(),
                0.0,
            )
        } else {
            let anchors = &history[t];
            let nv = dot(&v, &v).sqrt();
            let mut out = v.clone();
            let mut gates = Vec::new();
            for (a, &(_, gamma)) in anchors.iter().zip(scales) {
                let na = dot(a, a).sqrt();
                let c = dot(&v, a) / (nv * na);
                let sig = 1.0 / (1.0 + (-(kappa as f64) * (1.0 - c - tau as f64)).exp());
                gates.push((gamma as f64 * sig, c, na, gamma as f64 * kappa as f64 * sig * (1.0 - sig)));
                out.iter_mut()
                    .zip(v.iter().zip(a))
                    .for_each(|(o, (x, y))| *o -= gamma as f64 * sig * (x - y));
            }
            let no = dot(&out, &out).sqrt();
            let u: Vec<f64> = out.iter().map(|x| x / no).collect();
            let big_g: Vec<f64> = (0..d)
                .map(|i| d_anchor.iter().zip(scales).map(|(da, &(rho, _))| (1.0 - rho as f64) * da[i]).sum())
                .collect();
            let (gout, g_norm_h): (Vec<f64>, f64) = if normalized || keep_norm {
                // y = |h| u; the anchor takes u (normalized) or y (raw).
                let gu: Vec<f64> = if normalized {
                    (0..d).map(|i| nh * gy[i] + big_g[i]).collect()
                } else {
                    (0..d).map(|i| nh * (gy[i] + big_g[i])).collect()
                };
                let g_norm = if normalized { dot(&u, &gy) } else { dot(&u, &gy) + dot(&u, &big_g) };
                let ug = dot(&u, &gu);
                ((0..d).map(|i| (gu[i] - u[i] * ug) / no).collect(), g_norm)
            } else {
                ((0..d).map(|i| gy[i] + big_g[i]).collect(), 0.0)
            };
            let gate_sum: f64 = gates.iter().map(|g| g.0).sum();
            let mut gv: Vec<f64> = gout.iter().map(|x| (1.0 - gate_sum) * x).collect();
            for (k, (a, &(g, c, na, dg_ds))) in anchors.iter().zip(&gates).enumerate() {
                let diff: Vec<f64> = a.iter().zip(&v).map(|(x, y)| x - y).collect();
                let gc = -dot(&gout, &diff) * dg_ds;
                for i in 0..d {
                    gv[i] += gc * (a[i] / (nv * na) - c * v[i] / (nv * nv));
                    let ga = g * gout[i] + gc * (v[i] / (nv * na) - c * a[i] / (na * na));
                    d_anchor[k][i] = scales[k].0 as f64 * d_anchor[k][i] + ga;
                }
            }
            (gv, g_norm_h)
        };
        if t == sink {
            d_anchor.iter_mut().for_each(|da| da.iter_mut().for_each(|x| *x = 0.0));
        }
        // Back from v to h.
        let gh: Vec<f64> = if normalized {
            let vg = dot(&v, &gv);
            let direct = if t == sink { gy.clone() } else { vec![0.0; d] };
            (0..d).map(|i| (gv[i] - v[i] * vg) / nh + g_norm_h * hv[i] / nh + direct[i]).collect()
        } else {
            (0..d).map(|i| gv[i] + g_norm_h * hv[i] / nh).collect()
        };
        for i in 0..d {
            dy[t * d + i] = gh[i] as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_data::{check_gradient, rand_vec};

    #[test]
    fn lcm_backward_matches_finite_differences() {
        let (n, d) = (7, 5);
        let h: Vec<f32> = rand_vec(1, n * d, 1.0).iter().map(|x| x + 0.3).collect();
        let dy = rand_vec(2, n * d, 1.0);
        for scales in [vec![(0.8f32, 0.6f32)], vec![(0.5, 0.3), (0.9, 0.4)]] {
            for (keep_norm, normalized, sink) in
                [(false, false, 0), (true, false, 0), (true, false, 2), (false, true, 1)]
            {
                let forward = |h: &[f32]| {
                    let mut y = h.to_vec();
                    lcm_scan(&mut y, d, &scales, (0.05, 3.0), keep_norm, normalized, sink);
                    y
                };
                let mut grad = dy.clone();
                lcm_scan_backward(&h, &mut grad, d, &scales, (0.05, 3.0), keep_norm, normalized, sink);
                let what =
                    format!("lcm {scales:?} keep_norm={keep_norm} normalized={normalized} sink={sink}");
                check_gradient(&h, &grad, &dy, forward, &what);
            }
        }
    }
}
