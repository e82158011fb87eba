//! Mixed precision's dynamic loss scale (contract rule 6).

/// Mixed precision's dynamic loss scale. The scale changes only between windows (constant within
/// one): a window whose gradient overflowed (non-finite norm after the unscale; the device then
/// skipped AdamW) halves it, `growth_interval` clean windows in a row double it.
#[derive(Clone, Debug, PartialEq)]
pub struct LossScaler {
    pub scale: f32,
    pub growth_interval: usize,
    /// Clean windows since the last change.
    pub clean: usize,
}

/// The loss scale stays within [1, 2^24].
pub const MAX_LOSS_SCALE: f32 = 16_777_216.0;

impl LossScaler {
    pub fn new(scale: f32, growth_interval: usize) -> Self {
        Self { scale, growth_interval: growth_interval.max(1), clean: 0 }
    }

    /// After a window: `overflow` when its unscaled gradient was non-finite.
    pub fn update(&mut self, overflow: bool) {
        if overflow {
            self.scale = (self.scale * 0.5).max(1.0);
            self.clean = 0;
        } else {
            self.clean += 1;
            if self.clean >= self.growth_interval {
                self.scale = (self.scale * 2.0).min(MAX_LOSS_SCALE);
                self.clean = 0;
            }
        }
    }
}

