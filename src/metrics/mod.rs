//! Metrics of long generations (methods.md section 5) and the MSMA multi-scale analysis
//! (section 4), as plain functions over plain arrays, computed in f64. Undefined values
//! (too few tokens, windows or sentences) are NaN, never errors: a report always shows
//! whatever a run produced.

pub mod bootstrap;
pub mod drift;
pub mod latent;
pub mod lexical;
pub mod msma;
pub mod sequence;

/// Mean of the finite values; NaN when there are none.
pub fn mean(xs: &[f64]) -> f64 {
    let finite: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if finite.is_empty() {
        return f64::NAN;
    }
    finite.iter().sum::<f64>() / finite.len() as f64
}

/// Population variance (divided by n) of the finite values; NaN when there are none.
pub fn variance(xs: &[f64]) -> f64 {
    let m = mean(xs);
    let finite: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if finite.is_empty() {
        return f64::NAN;
    }
    finite.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / finite.len() as f64
}

/// Sample standard deviation (divided by n - 1) of the finite values; NaN below two.
pub fn sample_sd(xs: &[f64]) -> f64 {
    let finite: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    let n = finite.len();
    if n < 2 {
        return f64::NAN;
    }
    (variance(&finite) * n as f64 / (n - 1) as f64).sqrt()
}

/// Least-squares slope of `ys` against their index 0, 1, 2, ...; NaN below two points.
pub fn slope(ys: &[f64]) -> f64 {
    let n = ys.len();
    if n < 2 {
        return f64::NAN;
    }
    let tm = (n - 1) as f64 / 2.0;
    let ym = ys.iter().sum::<f64>() / n as f64;
    let (mut num, mut den) = (0.0, 0.0);
    for (t, y) in ys.iter().enumerate() {
        num += (t as f64 - tm) * (y - ym);
        den += (t as f64 - tm) * (t as f64 - tm);
    }
    num / den
}

/// Cosine similarity; NaN when either vector is zero.
pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return f64::NAN;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

/// Consecutive non-overlapping windows of `w` items over `n` items: the last, partial one is
/// dropped, except that a sequence shorter than one window is one window.
pub fn windows(n: usize, w: usize) -> Vec<std::ops::Range<usize>> {
    assert!(w > 0, "window of 0 tokens");
    if n == 0 {
        return Vec::new();
    }
    if n < w {
        return std::iter::once(0..n).collect();
    }
    (0..n / w).map(|i| i * w..(i + 1) * w).collect()
}

/// Widens f32 values.
pub fn widen(xs: &[f32]) -> Vec<f64> {
    xs.iter().map(|&x| x as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_statistics_by_hand() {
        let xs = [1.0, 2.0, 3.0, 6.0];
        assert_eq!(mean(&xs), 3.0);
        // Deviations -2, -1, 0, 3: squares sum to 14.
        assert_eq!(variance(&xs), 3.5);
        assert!((sample_sd(&xs) - (14.0f64 / 3.0).sqrt()).abs() < 1e-15);
        assert_eq!(mean(&[f64::NAN, 4.0]), 4.0);
        assert!(sample_sd(&[1.0]).is_nan());
        // y = 2 + 0.5 t exactly, then with symmetric noise that leaves the slope.
        assert!((slope(&[2.0, 2.5, 3.0, 3.5]) - 0.5).abs() < 1e-15);
        assert!((slope(&[2.1, 2.5, 3.0, 3.4]) - 0.44).abs() < 1e-12);
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - 0.5f64.sqrt()).abs() < 1e-15);
        assert!(cosine(&[0.0, 0.0], &[1.0, 1.0]).is_nan());
        assert_eq!(windows(10, 4), vec![0..4, 4..8]);
        assert_eq!(windows(3, 4), vec![0..3]);
        assert!(windows(0, 4).is_empty());
    }
}
