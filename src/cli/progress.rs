//! Progress on stderr through indicatif, shown on a terminal only: when stderr is a file or a
//! pipe, a study writes one line per finished stage instead (no carriage returns in logs).

use indicatif::{ProgressBar, ProgressFinish, ProgressStyle};
use std::cell::RefCell;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

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

/// A study's stages as bars, one after another: a new label starts a new bar. Where the bars
/// are hidden, each finished stage is one line with its count and seconds.
#[derive(Default)]
pub struct StageBars {
    current: RefCell<Option<Stage>>,
}

struct Stage {
    label: String,
    bar: Bar,
    started: Instant,
    logged: bool,
}

impl crate::study::Progress for StageBars {
    fn update(&self, stage: &str, done: usize, total: usize) {
        let mut current = self.current.borrow_mut();
        if current.as_ref().is_none_or(|s| s.label != stage) {
            let started = Instant::now();
            *current = Some(Stage { label: stage.to_string(), bar: Bar::new(stage), started, logged: false });
        }
        if let Some(s) = current.as_mut() {
            s.bar.update(done, total);
            if done >= total && !s.logged && !std::io::stderr().is_terminal() {
                s.logged = true;
                eprintln!("{stage}: {total} done in {:.0} s", s.started.elapsed().as_secs_f64());
            }
        }
    }
}
