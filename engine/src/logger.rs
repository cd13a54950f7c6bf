//! The engine's log: lines go through a bounded queue to one writer thread,
//! so that no core loop, signal handler or worker ever waits for stderr.
//!
//! A log reader that stalls (a pager, a stopped terminal, a log shipper that
//! hangs) used to stop the engine: a core loop blocked in `eprintln!` on a
//! full pipe served nothing and could not even be stopped by SIGTERM, whose
//! handler logged too. One that closed the pipe (`| head`) made `eprintln!`
//! panic on the core loop thread. Here the writer thread alone waits for
//! stderr, and ignores its errors; when the queue is full, lines are dropped
//! and counted, and the count is logged once the writer catches up.
//!
//! Everything in the serving process logs through [`log`]'s macros (the
//! network crate too), or [`line()`] for lines forwarded from workers; the
//! messages carry their own prefix (`nocturne: …`), the writer adds nothing.

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Lines waiting for the writer at most; past it, lines are dropped.
const QUEUE_LINES: usize = 8192;
/// Bytes waiting for the writer at most (a worker's line may be 4 KiB, and
/// escaping its control bytes makes it up to four times longer: without
/// this, a full queue of such lines would hold over 100 MiB).
const QUEUE_BYTES: usize = 4 << 20;

struct Logger {
    queue: SyncSender<String>,
    /// Lines queued and not yet written (or given up on).
    pending: AtomicUsize,
    /// Bytes of the lines queued and not yet written.
    pending_bytes: AtomicUsize,
    /// The most `pending_bytes` may reach; a line that would pass it is
    /// dropped (unless nothing is queued: one line always fits).
    max_pending_bytes: usize,
    /// Lines dropped because the queue was full, not yet reported.
    dropped: AtomicU64,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Starts the writer thread and makes it [`log`]'s logger. Idempotent; a
/// process that never calls it logs nothing through [`log`] and writes
/// [`line()`]s straight to stderr.
pub fn install() {
    let mut installed = false;
    let logger = LOGGER.get_or_init(|| {
        let (logger, lines) = Logger::new(QUEUE_LINES, QUEUE_BYTES);
        std::thread::Builder::new()
            .name("nocturne-log".into())
            .spawn(move || write_loop(lines))
            .expect("cannot start the log writer thread");
        installed = true;
        logger
    });
    if installed {
        // Only this crate installs a logger, once: this cannot fail.
        let _ = log::set_logger(logger);
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// Logs one line without waiting: queued for the writer, or dropped (and
/// counted) when the queue is full.
pub fn line(text: String) {
    match LOGGER.get() {
        Some(logger) => logger.push(text),
        None => {
            let _ = writeln!(std::io::stderr(), "{text}");
        }
    }
}

/// Waits until every line logged so far is written, at most `timeout` (a
/// stalled reader must not hold up an exit).
pub fn flush(timeout: Duration) {
    let Some(logger) = LOGGER.get() else { return };
    let deadline = Instant::now() + timeout;
    // Acquire: pairs with the writer's Release decrement, so the lines
    // counted out are written before we return.
    while logger.pending.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

impl Logger {
    fn new(max_lines: usize, max_bytes: usize) -> (Self, Receiver<String>) {
        let (queue, lines) = mpsc::sync_channel(max_lines);
        let logger = Logger {
            queue,
            pending: AtomicUsize::new(0),
            pending_bytes: AtomicUsize::new(0),
            max_pending_bytes: max_bytes,
            dropped: AtomicU64::new(0),
        };
        (logger, lines)
    }

    fn push(&self, text: String) {
        let len = text.len();
        // Relaxed: a budget, not a publication (the channel carries the
        // line); two racing pushes may both see room, which overshoots the
        // budget by at most a line each.
        let queued_bytes = self.pending_bytes.fetch_add(len, Ordering::Relaxed);
        if queued_bytes > 0 && queued_bytes + len > self.max_pending_bytes {
            self.pending_bytes.fetch_sub(len, Ordering::Relaxed);
            // Relaxed: a count the writer reports eventually.
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Relaxed: a count only; `flush` may see a line as pending a little
        // before it is queued, which only makes it wait for it.
        self.pending.fetch_add(1, Ordering::Relaxed);
        match self.queue.try_send(text) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.pending_bytes.fetch_sub(len, Ordering::Relaxed);
                // Release: pairs with `flush`'s Acquire load, as the
                // writer's decrement does.
                self.pending.fetch_sub(1, Ordering::Release);
                // Relaxed: see above.
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts `text`, taken from the queue, as written.
    fn written(&self, text: &str) -> usize {
        // Relaxed: see `push`.
        self.pending_bytes.fetch_sub(text.len(), Ordering::Relaxed);
        // Release: pairs with `flush`'s Acquire load.
        self.pending.fetch_sub(1, Ordering::Release) - 1
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            self.push(record.args().to_string());
        }
    }

    fn flush(&self) {}
}

fn write_loop(lines: Receiver<String>) {
    // Not locked for longer than a line: other threads (a panic message)
    // may write too.
    let stderr = std::io::stderr();
    for mut text in lines {
        let logger = LOGGER.get().expect("the writer starts with the logger");
        let queued_len = text.len();
        // One write per line, so that lines of other writers cannot land
        // inside it. Errors (EPIPE from a closed reader) are ignored: the
        // engine goes on serving without its log.
        text.push('\n');
        let _ = (&stderr).write_all(text.as_bytes());
        let left = logger.written(&text[..queued_len]);
        // The lines dropped came after every line still queued when they
        // were: say so where the gap is, once the queue is empty.
        // Relaxed: see `push`.
        if left == 0 {
            let dropped = logger.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                let note = format!(
                    "nocturne: {dropped} log line(s) dropped here: the log output was not read fast enough\n"
                );
                let _ = (&stderr).write_all(note.as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_past_the_byte_budget_are_dropped_and_counted_until_written() {
        let (logger, lines) = Logger::new(100, 1000);
        for _ in 0..3 {
            logger.push("x".repeat(400));
        }
        // Two lines (800 bytes) fit, the third would pass 1000.
        assert_eq!(logger.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(logger.pending.load(Ordering::Relaxed), 2);
        // A short one still fits beside them.
        logger.push("y".repeat(200));
        assert_eq!(logger.dropped.load(Ordering::Relaxed), 1);
        // Once a line is written, its bytes are free again.
        let first = lines.try_recv().unwrap();
        assert_eq!(logger.written(&first), 2);
        logger.push("z".repeat(400));
        assert_eq!(logger.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(logger.pending_bytes.load(Ordering::Relaxed), 1000);
    }

    #[test]
    fn a_line_longer_than_the_budget_passes_when_nothing_is_queued() {
        let (logger, lines) = Logger::new(100, 10);
        logger.push("a line of more than ten bytes".into());
        assert_eq!(logger.dropped.load(Ordering::Relaxed), 0);
        logger.push("another".into());
        assert_eq!(logger.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(lines.try_recv().unwrap(), "a line of more than ten bytes");
    }

    #[test]
    fn lines_past_the_line_budget_are_dropped_and_counted() {
        let (logger, _lines) = Logger::new(2, 1 << 20);
        for i in 0..5 {
            logger.push(format!("line {i}"));
        }
        assert_eq!(logger.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(logger.pending.load(Ordering::Relaxed), 2);
        assert_eq!(logger.pending_bytes.load(Ordering::Relaxed), 12);
    }
}
