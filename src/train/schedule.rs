//! Learning-rate schedules, following Hugging Face transformers'
//! `get_constant_schedule_with_warmup` and `get_cosine_schedule_with_warmup`:
//!
//! - warmup (`step < warmup`): `base_lr * step / warmup`, so step 0 runs at 0 and the
//!   rate reaches `base_lr` at step `warmup`;
//! - then `Constant` stays at `base_lr`, and `Cosine` follows
//!   `base_lr * (m + (1 - m) * 0.5 * (1 + cos(pi * progress)))` with
//!   `progress = (step - warmup) / (total_steps - warmup)` and `m = min_lr_fraction`
//!   (0 gives transformers' schedule). Past `total_steps` the cosine stays at its floor
//!   instead of rising again.

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Schedule {
    /// The base rate after the warmup
    #[default]
    Constant,
    /// A cosine from the base rate down to the floor after the warmup
    Cosine,
}

/// The learning rate for 0-based `step` (see the module docs). `min_lr_fraction`, in
/// [0, 1], is the cosine's floor as a fraction of `base_lr`; pass 0.0 for the usual one.
pub fn lr_at(
    step: usize,
    base_lr: f64,
    warmup: usize,
    total_steps: usize,
    schedule: Schedule,
    min_lr_fraction: f64,
) -> f64 {
    if step < warmup {
        return base_lr * step as f64 / warmup as f64;
    }
    match schedule {
        Schedule::Constant => base_lr,
        Schedule::Cosine => {
            // max(1, ..) as in transformers: a run no longer than its warmup has no decay.
            let progress =
                ((step - warmup) as f64 / total_steps.saturating_sub(warmup).max(1) as f64).min(1.0);
            let m = min_lr_fraction;
            let factor = m + (1.0 - m) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
            base_lr * factor
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_without_warmup_is_exactly_base_lr() {
        for step in [0, 1, 99, 1_000_000] {
            assert_eq!(lr_at(step, 3e-4, 0, 100, Schedule::Constant, 0.0), 3e-4);
        }
    }

    #[test]
    fn warmup_is_linear_from_zero() {
        let lr = |s| lr_at(s, 1.0, 4, 100, Schedule::Constant, 0.0);
        assert_eq!([lr(0), lr(1), lr(2), lr(3), lr(4), lr(50)], [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]);
        let c = |s| lr_at(s, 1.0, 4, 100, Schedule::Cosine, 0.0);
        assert_eq!([c(0), c(2), c(4)], [0.0, 0.5, 1.0]);
    }

    #[test]
    fn cosine_matches_transformers() {
        // transformers: lr * 0.5 * (1 + cos(pi * (step - warmup) / (total - warmup))).
        let (warmup, total) = (10, 110);
        for step in [10, 20, 35, 60, 85, 109] {
            let p = (step - warmup) as f64 / (total - warmup) as f64;
            let want = 2e-3 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos());
            let got = lr_at(step, 2e-3, warmup, total, Schedule::Cosine, 0.0);
            assert!((got - want).abs() < 1e-9, "step {step}: {got} vs {want}");
        }
        assert_eq!(lr_at(60, 1.0, 10, 110, Schedule::Cosine, 0.0), 0.5);
        // It ends at the floor and stays there.
        assert_eq!(lr_at(110, 1.0, 10, 110, Schedule::Cosine, 0.0), 0.0);
        assert_eq!(lr_at(500, 1.0, 10, 110, Schedule::Cosine, 0.0), 0.0);
        assert_eq!(lr_at(500, 1.0, 10, 110, Schedule::Cosine, 0.1), 0.1);
        assert!((lr_at(60, 1.0, 10, 110, Schedule::Cosine, 0.2) - 0.6).abs() < 1e-12);
        // No decay span: full rate after warmup, no division by zero.
        assert_eq!(lr_at(5, 1.0, 5, 5, Schedule::Cosine, 0.0), 1.0);
        assert_eq!(lr_at(0, 1.0, 0, 0, Schedule::Cosine, 0.0), 1.0);
    }
}
