//! Progress of long operations (`publish --file`, `import`, `bench`) on
//! standard error — drawn only when it is a terminal, so scripts, pipes and
//! logs see nothing but the commands' own output.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar (a known total) or a counter (an unknown one).
pub struct Progress {
    bar: ProgressBar,
    drawn: bool,
}

impl Progress {
    /// A bar towards `total` items (`None`: a running count), each `unit`.
    pub fn new(total: Option<u64>, unit: &'static str) -> Self {
        let drawn = std::io::stderr().is_terminal();
        let bar = match total {
            Some(n) => ProgressBar::new(n).with_style(
                ProgressStyle::with_template(&format!(
                    "{{bar:30}} {{pos}}/{{len}} {unit} ({{per_sec}}, {{eta}} left) {{msg}}"
                ))
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template(&format!(
                    "{{spinner}} {{pos}} {unit} ({{per_sec}}, {{elapsed}}) {{msg}}"
                ))
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.set_draw_target(if drawn {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        if drawn {
            bar.enable_steady_tick(Duration::from_millis(200));
        }
        Self { bar, drawn }
    }

    /// `n` more items done.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Sets the count of items done.
    pub fn set(&self, done: u64) {
        self.bar.set_position(done);
    }

    /// The text after the count (e.g. "12 invalid").
    pub fn message(&self, msg: String) {
        self.bar.set_message(msg);
    }

    /// Prints `line` on standard error: above the bar on a terminal,
    /// as a plain line otherwise.
    pub fn note(&self, line: &str) {
        if self.drawn {
            self.bar.println(line);
        } else {
            eprintln!("{line}");
        }
    }

    /// Removes the bar (the command prints its own summary).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}
