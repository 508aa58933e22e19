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
