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
//! network crate too), or [`line`] for lines forwarded from workers; the
//! messages carry their own prefix (`nocturne: …`), the writer adds nothing.

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Lines waiting for the writer at most; past it, lines are dropped.
const QUEUE_LINES: usize = 8192;

struct Logger {
    queue: SyncSender<String>,
    /// Lines queued and not yet written (or given up on).
    pending: AtomicUsize,
    /// Lines dropped because the queue was full, not yet reported.
    dropped: AtomicU64,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Starts the writer thread and makes it [`log`]'s logger. Idempotent; a
/// process that never calls it logs nothing through [`log`] and writes
/// [`line`]s straight to stderr.
pub fn install() {
    let mut installed = false;
    let logger = LOGGER.get_or_init(|| {
        let (queue, lines) = mpsc::sync_channel(QUEUE_LINES);
        std::thread::Builder::new()
            .name("nocturne-log".into())
            .spawn(move || write_loop(lines))
            .expect("cannot start the log writer thread");
        installed = true;
        Logger {
            queue,
            pending: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        }
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
    fn push(&self, text: String) {
        // Relaxed: a count only; `flush` may see a line as pending a little
        // before it is queued, which only makes it wait for it.
        self.pending.fetch_add(1, Ordering::Relaxed);
        match self.queue.try_send(text) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.pending.fetch_sub(1, Ordering::Release);
                // Relaxed: a count the writer reports eventually.
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
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
        // One write per line, so that lines of other writers cannot land
        // inside it. Errors (EPIPE from a closed reader) are ignored: the
        // engine goes on serving without its log.
        text.push('\n');
        let _ = (&stderr).write_all(text.as_bytes());
        // Release: pairs with `flush`'s Acquire load.
        let left = logger.pending.fetch_sub(1, Ordering::Release) - 1;
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
