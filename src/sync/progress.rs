//! Progress of the jobs that take a while (the reconcile pass, hashing a large file): a bar on
//! a terminal, otherwise an info log line at most every few seconds, and a last line when done.

use parking_lot::Mutex;
use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};
use maxlofs_api::hash::BytesHashed;

/// How often a log line reports progress, unless `MAXLOFS_PROGRESS_INTERVAL_MS` says otherwise.
const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Every bar on the terminal: they share its bottom lines, and log lines are written above them.
static BARS: LazyLock<MultiProgress> = LazyLock::new(MultiProgress::new);

/// What a job counts.
#[derive(Clone, Copy, Debug)]
pub enum Unit {
    Bytes,
    /// Things, with their name in the plural ("paths").
    Items(&'static str),
}

/// One job's progress. `add` may be called from several threads. Dropping it removes the bar and
/// logs a last line with how far the job got.
pub struct Progress {
    label: String,
    unit: Unit,
    total: Option<u64>,
    done: AtomicU64,
    started: Instant,
    shown: Shown,
}

enum Shown {
    Bar(ProgressBar),
    /// Log lines, at most one per `every`; `last` is when the previous one was due.
    Log {
        every: Duration,
        last: Mutex<Instant>,
    },
}

impl Progress {
    /// A job named `label` that will count to `total` (`None`: not known in advance).
    pub fn new(label: impl Into<String>, total: Option<u64>, unit: Unit) -> Progress {
        // A daemon's stderr is its log file, so only a foreground run on a terminal gets a bar.
        if io::stderr().is_terminal() {
            Progress::with_bar(label.into(), total, unit)
        } else {
            Progress::logging(label.into(), total, unit, log_interval())
        }
    }

    fn with_bar(label: String, total: Option<u64>, unit: Unit) -> Progress {
        let template = match (unit, total) {
            (Unit::Bytes, Some(_)) => {
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}, {eta} left".into()
            }
            (Unit::Bytes, None) => "{spinner} {prefix}: {bytes}, {bytes_per_sec}".into(),
            (Unit::Items(name), Some(_)) => {
                format!("{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {name} {{per_sec:0}}")
            }
            (Unit::Items(name), None) => {
                format!("{{spinner}} {{prefix}}: {{pos}} {name}, {{per_sec:0}}")
            }
        };
        let style = ProgressStyle::with_template(&template)
            .expect("the templates are valid")
            .progress_chars("=> ");
        let bar = match total {
            Some(total) => ProgressBar::new(total),
            None => ProgressBar::no_length(),
        };
        let bar = BARS.add(bar.with_style(style).with_prefix(label.clone()));
        Progress::showing(label, total, unit, Shown::Bar(bar))
    }

    fn logging(label: String, total: Option<u64>, unit: Unit, every: Duration) -> Progress {
        let last = Mutex::new(Instant::now());
        Progress::showing(label, total, unit, Shown::Log { every, last })
    }

    fn showing(label: String, total: Option<u64>, unit: Unit, shown: Shown) -> Progress {
        Progress {
            label,
            unit,
            total,
            done: AtomicU64::new(0),
            started: Instant::now(),
            shown,
        }
    }

    /// Counts `n` more done.
    pub fn add(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        match &self.shown {
            Shown::Bar(bar) => bar.inc(n),
            Shown::Log { .. } => {
                if let Some(line) = self.line_due(done, Instant::now()) {
                    tracing::info!("{line}");
                }
            }
        }
    }

    /// How much is done so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// The log line to write at `now`, if the last one was at least an interval ago.
    fn line_due(&self, done: u64, now: Instant) -> Option<String> {
        let Shown::Log { every, last } = &self.shown else {
            return None;
        };
        // Held by another thread that is checking the same: one line is enough.
        let mut last = last.try_lock()?;
        if now.saturating_duration_since(*last) < *every {
            return None;
        }
        *last = now;
        Some(format!(
            "{}: {}, {}",
            self.label,
            self.count(done),
            self.rate(done, now)
        ))
    }

    /// `done` of the total, e.g. `1200/5000 paths (24%)`, or `1200 paths` without a total.
    fn count(&self, done: u64) -> String {
        let amount = |n: u64| match self.unit {
            Unit::Bytes => HumanBytes(n).to_string(),
            Unit::Items(_) => n.to_string(),
        };
        let name = match self.unit {
            Unit::Bytes => String::new(),
            Unit::Items(name) => format!(" {name}"),
        };
        match self.total {
            Some(total) => {
                let percent = (done.saturating_mul(100)).checked_div(total).unwrap_or(100);
                format!("{}/{}{name} ({percent}%)", amount(done), amount(total))
            }
            None => format!("{}{name}", amount(done)),
        }
    }

    /// `done` per second since the start, e.g. `3400 paths/s` or `180.00 MiB/s`.
    fn rate(&self, done: u64, now: Instant) -> String {
        let secs = now.saturating_duration_since(self.started).as_secs_f64();
        let per_sec = if secs > 0.0 {
            (done as f64 / secs) as u64
        } else {
            0
        };
        match self.unit {
            Unit::Bytes => format!("{}/s", HumanBytes(per_sec)),
            Unit::Items(name) => format!("{per_sec} {name}/s"),
        }
    }
}

/// Files at least this large report how their hashing goes: at disk speed it takes seconds.
const HASHING_PROGRESS_MIN: u64 = 256 * 1024 * 1024;

/// The progress report for hashing `name`, `size` bytes long; none for a file that hashes
/// quickly.
pub fn hashing(name: &Path, size: u64) -> Option<Progress> {
    (size >= HASHING_PROGRESS_MIN).then(|| {
        Progress::new(
            format!("hashing {}", name.display()),
            Some(size),
            Unit::Bytes,
        )
    })
}

impl BytesHashed for Progress {
    fn add(&self, bytes: u64) {
        Progress::add(self, bytes);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Shown::Bar(bar) = &self.shown {
            bar.finish_and_clear();
            BARS.remove(bar);
        }
        let done = *self.done.get_mut();
        let now = Instant::now();
        tracing::info!(
            "{}: {} in {:.1}s, {}",
            self.label,
            self.count(done),
            now.saturating_duration_since(self.started).as_secs_f64(),
            self.rate(done, now)
        );
    }
}

/// `MAXLOFS_PROGRESS_INTERVAL_MS` when set to a number (tests make it short), else 5 s.
fn log_interval() -> Duration {
    std::env::var("MAXLOFS_PROGRESS_INTERVAL_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(LOG_INTERVAL, Duration::from_millis)
}

/// Where log lines go: stderr, with the progress bars lifted out of the way while a line is
/// written, so that the two do not garble each other.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        BARS.suspend(|| io::stderr().write(buf))
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        BARS.suspend(|| io::stderr().write_all(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_large_file_reports_its_hashing() {
        assert!(hashing(Path::new("small"), HASHING_PROGRESS_MIN - 1).is_none());
        assert!(hashing(Path::new("large"), HASHING_PROGRESS_MIN).is_some());
    }

    use super::*;

    #[test]
    fn log_lines_come_at_most_once_per_interval() {
        let progress = Progress::logging(
            "walking".into(),
            Some(100),
            Unit::Items("paths"),
            Duration::from_secs(5),
        );
        let at = |secs: u64| progress.started + Duration::from_secs(secs);
        assert_eq!(progress.line_due(10, at(1)), None);
        assert_eq!(progress.line_due(40, at(4)), None);
        assert_eq!(
            progress.line_due(50, at(5)).as_deref(),
            Some("walking: 50/100 paths (50%), 10 paths/s")
        );
        // The interval runs from the last line, not from the start.
        assert_eq!(progress.line_due(60, at(6)), None);
        assert_eq!(progress.line_due(90, at(9)), None);
        assert_eq!(
            progress.line_due(100, at(10)).as_deref(),
            Some("walking: 100/100 paths (100%), 10 paths/s")
        );
    }

    #[test]
    fn log_lines_say_bytes_and_unknown_totals_plainly() {
        let bytes = Progress::logging(
            "hashing a.mkv".into(),
            Some(4 << 30),
            Unit::Bytes,
            Duration::ZERO,
        );
        assert_eq!(
            bytes
                .line_due(1 << 30, bytes.started + Duration::from_secs(4))
                .as_deref(),
            Some("hashing a.mkv: 1.00 GiB/4.00 GiB (25%), 256.00 MiB/s")
        );
        let open_ended =
            Progress::logging("walking".into(), None, Unit::Items("paths"), Duration::ZERO);
        assert_eq!(
            open_ended
                .line_due(300, open_ended.started + Duration::from_secs(2))
                .as_deref(),
            Some("walking: 300 paths, 150 paths/s")
        );
    }
}
