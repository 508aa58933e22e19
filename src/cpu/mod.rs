//! Plain reference implementations of every kernel (loops, f64 accumulation), used by the
//! tests to check the WGSL.

pub mod act;
pub mod attention;
pub mod cgfm;
pub mod hgc;
pub mod lcm;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod rope;
pub mod stats;
pub mod trace;

#[cfg(test)]
pub mod test_data {
    /// Deterministic pseudo-random values in [-scale, scale).
    pub fn rand_vec(seed: u64, n: usize, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * scale
            })
            .collect()
    }

    /// Asserts |got - want| <= tol * max(1, |want|) elementwise.
    pub fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol * w.abs().max(1.0), "{what}: element {i}: got {g}, want {w}");
        }
    }

    /// Checks an analytic gradient `grad` of the loss `Σ dy · f(x)` against central finite
    /// differences in every element of `x` (f64 sums over f32 outputs, so a step of 1e-2
    /// and a tolerance of 1e-2 relative).
    pub fn check_gradient(x: &[f32], grad: &[f32], dy: &[f32], f: impl Fn(&[f32]) -> Vec<f32>, what: &str) {
        let loss = |x: &[f32]| f(x).iter().zip(dy).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>();
        let h = 1e-2f32;
        let mut xp = x.to_vec();
        for i in 0..x.len() {
            xp[i] = x[i] + h;
            let up = loss(&xp);
            xp[i] = x[i] - h;
            let down = loss(&xp);
            xp[i] = x[i];
            let fd = (up - down) / (2.0 * h as f64);
            let g = grad[i] as f64;
            assert!(
                (g - fd).abs() <= 1e-2 * fd.abs().max(1.0),
                "{what}: element {i}: analytic {g}, finite differences {fd}"
            );
        }
    }
}
