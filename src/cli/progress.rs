//! Waiting on stderr through indicatif, shown on a terminal only (the bars of the studies and
//! of fine-tuning are crate::study::Progress).

use indicatif::{ProgressBar, ProgressFinish, ProgressStyle};
use std::time::Duration;

/// A spinner with the seconds waited, for a wait of unknown length; cleared when finished or
/// dropped.
pub fn spinner(message: String) -> ProgressBar {
    let s = ProgressBar::new_spinner().with_message(message).with_finish(ProgressFinish::AndClear);
    s.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("a valid template"));
    s.enable_steady_tick(Duration::from_millis(120));
    s
}
