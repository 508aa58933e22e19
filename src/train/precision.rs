//! Mixed-precision training (`--precision mixed`): the products take f16 operands and
//! accumulate in f32 (`Step::f16_operands`), while the master weights, the gradients and
//! AdamW stay f32; the loss's gradient is multiplied by a dynamic loss scale so that small
//! gradients survive f16, and a step whose gradients overflowed is skipped, as PyTorch's
//! `GradScaler` does it.

/// The precision of the training products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Precision {
    /// f32 operands, f32 accumulation (the golden runs)
    #[default]
    F32,
    /// f16 operands into the products, f32 accumulation, f32 master weights and AdamW,
    /// dynamic loss scaling
    Mixed,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Mixed => "mixed",
        }
    }
}

/// The dynamic loss scale, with `torch.amp.GradScaler`'s defaults: start at 2^16, halve on
/// a step whose gradients are not finite (the step is skipped), double after
/// [`LossScaler::GROWTH_INTERVAL`] good steps in a row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossScaler {
    /// What the loss's gradient is multiplied by.
    pub scale: f32,
    /// Good steps since the scale last changed.
    pub good_steps: u32,
}

impl Default for LossScaler {
    fn default() -> LossScaler {
        LossScaler { scale: LossScaler::INIT, good_steps: 0 }
    }
}

impl LossScaler {
    pub const INIT: f32 = 65536.0;
    pub const GROWTH_INTERVAL: u32 = 2000;

    /// After a step whose gradients were `finite` (else it was skipped): the next scale.
    pub fn update(&mut self, finite: bool) {
        if !finite {
            self.scale *= 0.5;
            self.good_steps = 0;
            return;
        }
        self.good_steps += 1;
        if self.good_steps == LossScaler::GROWTH_INTERVAL {
            // As torch, a doubling that would overflow keeps the scale.
            if (self.scale * 2.0).is_finite() {
                self.scale *= 2.0;
            }
            self.good_steps = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_halves_on_overflow_and_doubles_after_2000_good_steps() {
        let mut s = LossScaler::default();
        s.update(false);
        assert_eq!(s, LossScaler { scale: 32768.0, good_steps: 0 });
        for _ in 0..1999 {
            s.update(true);
        }
        assert_eq!(s, LossScaler { scale: 32768.0, good_steps: 1999 });
        s.update(true);
        assert_eq!(s, LossScaler { scale: 65536.0, good_steps: 0 });
        s.update(true);
        s.update(false);
        assert_eq!(s, LossScaler { scale: 32768.0, good_steps: 0 });
        let mut top = LossScaler { scale: f32::MAX, good_steps: 1999 };
        top.update(true);
        assert_eq!(top, LossScaler { scale: f32::MAX, good_steps: 0 });
    }
}
