//! Progress on stderr through indicatif, shown on a terminal only: nothing at all when stderr
//! is a file or a pipe (no carriage returns in logs).

use indicatif::{ProgressBar, ProgressFinish, ProgressStyle};
use std::cell::RefCell;
use std::time::Duration;

/// A spinner with the seconds waited, for a wait of unknown length; cleared when finished or
/// dropped.
pub fn spinner(message: String) -> ProgressBar {
    let s = ProgressBar::new_spinner().with_message(message).with_finish(ProgressFinish::AndClear);
    s.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("a valid template"));
    s.enable_steady_tick(Duration::from_millis(120));
    s
}

/// A labelled progress bar with its ETA.
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    pub fn new(label: impl Into<String>) -> Bar {
        let bar = ProgressBar::new(0).with_prefix(label.into());
        bar.set_style(
            ProgressStyle::with_template("{prefix:<24} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                .expect("a valid template")
                .progress_chars("#>-"),
        );
        Bar { bar }
    }

    /// Moves the bar to `done` of `total` units (finished at `total`).
    pub fn update(&self, done: usize, total: usize) {
        self.bar.set_length(total as u64);
        self.bar.set_position(done as u64);
        if done >= total {
            self.bar.finish();
        }
    }

    /// The text after the count (the latest loss, say).
    pub fn message(&self, text: String) {
        self.bar.set_message(text);
    }

    /// Prints a line above the bar, also where the bar is hidden (such lines are what a log
    /// keeps).
    pub fn println(&self, line: &str) {
        self.bar.suspend(|| eprintln!("{line}"));
    }
}

/// A study's stages as bars, one after another: a new label starts a new bar.
#[derive(Default)]
pub struct StageBars {
    current: RefCell<Option<(String, Bar)>>,
}

impl crate::study::Progress for StageBars {
    fn update(&self, stage: &str, done: usize, total: usize) {
        let mut current = self.current.borrow_mut();
        if current.as_ref().is_none_or(|(label, _)| label != stage) {
            *current = Some((stage.to_string(), Bar::new(stage)));
        }
        if let Some((_, bar)) = current.as_ref() {
            bar.update(done, total);
        }
    }
}
