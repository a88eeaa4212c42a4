//! Spinners on stderr for work that takes a while, for a person watching: indicatif hides
//! them when stderr is not a terminal, and callers hide them with `--json`. Log lines go
//! through [`LogWriter`], which lifts the spinners while a line is written.

use std::io::Write;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Every spinner shown, drawn together on stderr.
static BARS: LazyLock<MultiProgress> = LazyLock::new(MultiProgress::new);

fn style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg} {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// A spinner with `message` and the time elapsed, shown now unless `show` is false. Finish
/// it with [`ProgressBar::finish_and_clear`] before printing the result.
pub(crate) fn spinner(message: String, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = BARS.add(
        ProgressBar::new_spinner()
            .with_style(style())
            .with_message(message),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// A spinner that appears only if the work is not done after `after`, so quick work shows
/// nothing. Dropping it removes it.
pub(crate) struct Delayed {
    /// `None` once done; the spinner, once shown.
    state: Arc<Mutex<Option<Option<ProgressBar>>>>,
}

impl Delayed {
    pub(crate) fn new(message: String, after: Duration, show: bool) -> Delayed {
        let state = Arc::new(Mutex::new(Some(None)));
        if show {
            let shared = Arc::clone(&state);
            std::thread::spawn(move || {
                std::thread::sleep(after);
                let mut state = lock(&shared);
                if let Some(shown) = state.as_mut() {
                    *shown = Some(spinner(message, true));
                }
            });
        }
        Delayed { state }
    }
}

impl Drop for Delayed {
    fn drop(&mut self) {
        if let Some(Some(bar)) = lock(&self.state).take() {
            bar.finish_and_clear();
        }
    }
}

/// A spinner's state survives a panic elsewhere: it only decides what is drawn.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes log lines to stderr without tearing the spinners.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        BARS.suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
