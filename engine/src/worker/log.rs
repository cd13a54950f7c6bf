//! Worker stdout/stderr into the engine log, one line at a time, tagged
//! `[worker <function> pid=<pid>] <line>`.
//!
//! One forwarder thread per [`LogForwarder`] polls the pipes of all its workers
//! (mio, edge-triggered), far from any hot path: a worker that logs a lot costs
//! the engine this thread's time, never a core loop's. The pipes are read in
//! turns of at most [`TURN_BYTES`] each, so one worker that writes without
//! pause cannot keep the thread from the others' pipes (and them blocked in
//! `write`).
//!
//! What reaches the log is bounded per worker, whatever the worker writes:
//! * a line is cut at [`MAX_LINE_LEN`] bytes (`lines`); it is logged when it
//!   ends, with how many bytes were cut: `xxxx… (123456 more bytes cut)`;
//! * a worker's lines are dropped past a budget of [`RATE_BYTES_PER_SEC`] with
//!   a burst of [`BURST_BYTES`] (`budget`), with one note per episode:
//!   `… N bytes of output dropped (over 256 KiB/s)`.
//!
//! The pipes are read as fast as the worker writes either way: dropping a line
//! never makes the worker wait. A final line without a newline is flushed when
//! the pipe closes, and bytes that are not UTF-8 are shown lossily. Where lines
//! go is a [`LogSink`]: the engine's log by default, anything (a test's buffer)
//! when injected. The engine's log queues lines for its writer thread and drops
//! them when its reader falls behind (`crate::logger`), so a worker that logs
//! fast costs lines, not time; a slow injected sink makes the worker block in
//! `write`, as any process writing into a full pipe. Nothing is buffered
//! without bound.

mod budget;
mod lines;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read};
use std::process::{ChildStderr, ChildStdout};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use mio::unix::pipe;
use mio::{Events, Interest, Poll, Token, Waker};

use budget::LogBudget;
pub use budget::{BURST_BYTES, RATE_BYTES_PER_SEC};
use lines::LineSplitter;
pub use lines::{Line, MAX_LINE_LEN};

/// Bytes read from one pipe before the next pipe's turn: what a full pipe
/// holds (64 KiB by default), so a pipe that is only busy is read whole.
pub const TURN_BYTES: usize = 64 * 1024;

/// Which of the worker's streams a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// The worker's stdout.
    Stdout,
    /// The worker's stderr.
    Stderr,
}

/// Where a forwarded line came from.
#[derive(Clone, Copy, Debug)]
pub struct LineOrigin<'a> {
    /// Function the worker serves.
    pub function: &'a str,
    /// The worker's pid.
    pub pid: u32,
    /// Which stream (for a note on dropped output, the stream whose line
    /// was dropped first).
    pub stream: Stream,
}

/// What the forwarder hands its sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output<'a> {
    /// One line of the worker's output (perhaps cut).
    Line(Line<'a>),
    /// `bytes` of the worker's output (its lines' bytes, line ends not
    /// counted) were dropped since its last line: it went over its budget.
    Dropped {
        /// Output bytes dropped in the episode.
        bytes: u64,
    },
}

/// Receives forwarded output. Called on the forwarder thread, one line (or
/// note) at a time.
pub trait LogSink: Send + Sync + 'static {
    /// One line, or a note on dropped output.
    fn output(&self, origin: &LineOrigin<'_>, output: Output<'_>);
}

impl<F> LogSink for F
where
    F: Fn(&LineOrigin<'_>, Output<'_>) + Send + Sync + 'static,
{
    fn output(&self, origin: &LineOrigin<'_>, output: Output<'_>) {
        self(origin, output)
    }
}

/// The default sink: [`format_output`] on the engine's stderr.
#[derive(Clone, Copy, Debug, Default)]
pub struct StderrSink;

impl LogSink for StderrSink {
    fn output(&self, origin: &LineOrigin<'_>, output: Output<'_>) {
        // Through the engine's log queue: a stalled reader costs lines,
        // never a worker blocked on its output pipe.
        crate::logger::line(format_output(origin, output));
    }
}

/// `[worker foo pid=1234] <line>`, with `… (N more bytes cut)` after a cut
/// line; `[worker foo pid=1234] … N bytes of output dropped (over 256 KiB/s)`
/// for dropped output. Control characters but tab are escaped (`\r`,
/// `\u{1b}`): a worker's carriage return or terminal escape must not
/// overwrite the tag, or other lines, on the operator's terminal.
pub fn format_output(origin: &LineOrigin<'_>, output: Output<'_>) -> String {
    let tag = format!("[worker {} pid={}]", origin.function, origin.pid);
    match output {
        Output::Line(line) => {
            let mut text = String::with_capacity(tag.len() + 1 + line.text.len());
            text.push_str(&tag);
            text.push(' ');
            for c in shown_chars(line.text) {
                match c {
                    ShownChar::Plain(c) => text.push(c),
                    ShownChar::Escaped(e) => text.extend(e),
                }
            }
            if line.cut > 0 {
                text.push_str(&format!("… ({} more bytes cut)", line.cut));
            }
            text
        }
        Output::Dropped { bytes } => format!(
            "{tag} … {bytes} bytes of output dropped (over {} KiB/s)",
            RATE_BYTES_PER_SEC / 1024
        ),
    }
}

/// Bytes `format_output` takes for `line`, its newline included, without
/// building it: what the line costs of its worker's budget.
fn logged_len(origin: &LineOrigin<'_>, line: Line<'_>) -> u64 {
    let tag = "[worker  pid=] ".len() + origin.function.len() + decimal_digits(origin.pid.into());
    let text: usize = shown_chars(line.text).map(|c| c.len()).sum();
    let cut = if line.cut > 0 {
        "… ( more bytes cut)".len() + decimal_digits(line.cut)
    } else {
        0
    };
    (tag + text + cut + 1) as u64
}

fn decimal_digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// The characters a line is shown as: lossy UTF-8, control characters but
/// tab escaped. `format_output` writes them, `logged_len` counts them: one
/// source for both, so that a line's cost is what it takes in the log.
fn shown_chars(line: &[u8]) -> impl Iterator<Item = ShownChar> + '_ {
    line.utf8_chunks().flat_map(|chunk| {
        let invalid =
            (!chunk.invalid().is_empty()).then_some(ShownChar::Plain(char::REPLACEMENT_CHARACTER));
        chunk
            .valid()
            .chars()
            .map(|c| {
                if c.is_control() && c != '\t' {
                    ShownChar::Escaped(c.escape_default())
                } else {
                    ShownChar::Plain(c)
                }
            })
            .chain(invalid)
    })
}

/// One character of a line as shown: itself, or its escape.
#[derive(Clone, Debug)]
enum ShownChar {
    Plain(char),
    Escaped(std::char::EscapeDefault),
}

impl ShownChar {
    /// Its length in UTF-8.
    fn len(&self) -> usize {
        match self {
            Self::Plain(c) => c.len_utf8(),
            // Escapes are ASCII.
            Self::Escaped(e) => e.len(),
        }
    }
}

/// A worker's pipes, handed to the forwarder thread.
struct NewWorker {
    function: Arc<str>,
    pid: u32,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
}

/// A handle on a forwarder thread; cheap to clone. The thread ends once every
/// handle is dropped and every pipe it forwards has closed.
#[derive(Clone)]
pub struct LogForwarder {
    inner: Arc<Handle>,
}

struct Handle {
    new_workers: mpsc::Sender<NewWorker>,
    waker: Waker,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Lets the thread notice the disconnected channel; if it cannot be
        // woken it ends when its last pipe closes anyway.
        let _ = self.waker.wake();
    }
}

const WAKER: Token = Token(0);

impl LogForwarder {
    /// Starts a forwarder thread writing to `sink`.
    pub fn new(sink: impl LogSink) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("nocturne-worker-log".into())
            .spawn(move || Forwarder::new(poll, rx, sink).run())?;
        Ok(Self {
            inner: Arc::new(Handle {
                new_workers: tx,
                waker,
            }),
        })
    }

    /// The process-wide forwarder to the engine's stderr, started on first use.
    pub fn stderr() -> io::Result<Self> {
        static STDERR: OnceLock<LogForwarder> = OnceLock::new();
        if let Some(f) = STDERR.get() {
            return Ok(f.clone());
        }
        let fresh = Self::new(StderrSink)?;
        // Two first callers may race: the loser's forwarder (no pipes) just ends.
        Ok(STDERR.get_or_init(|| fresh).clone())
    }

    /// Forwards a worker's stdout and stderr until they close.
    pub fn forward(
        &self,
        function: &str,
        pid: u32,
        stdout: ChildStdout,
        stderr: ChildStderr,
    ) -> io::Result<()> {
        let stdout = pipe::Receiver::from(stdout);
        let stderr = pipe::Receiver::from(stderr);
        stdout.set_nonblocking(true)?;
        stderr.set_nonblocking(true)?;
        let new = NewWorker {
            function: Arc::from(function),
            pid,
            stdout,
            stderr,
        };
        self.inner.new_workers.send(new).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the log forwarder thread is gone",
            )
        })?;
        self.inner.waker.wake()
    }
}

/// A worker whose output is forwarded.
struct WorkerOutput {
    function: Arc<str>,
    pid: u32,
    budget: LogBudget,
    /// Its pipes not yet closed (2, 1, then it is forgotten).
    open_pipes: u8,
    /// The stream of the first line dropped in the episode under way.
    dropping_from: Stream,
}

impl WorkerOutput {
    fn origin(&self, stream: Stream) -> LineOrigin<'_> {
        LineOrigin {
            function: &self.function,
            pid: self.pid,
            stream,
        }
    }

    /// Hands `line` to `sink` if the budget allows, after the note of a drop
    /// episode that it ends.
    fn line(&mut self, stream: Stream, line: Line<'_>, now: Instant, sink: &impl LogSink) {
        self.end_episode(now, sink);
        let was_dropping = self.budget.dropping();
        // Fields, not `self.origin()`: the budget is borrowed beside it.
        let origin = LineOrigin {
            function: &self.function,
            pid: self.pid,
            stream,
        };
        if self
            .budget
            .admit(line.len(), now, || logged_len(&origin, line))
        {
            sink.output(&origin, Output::Line(line));
        } else if !was_dropping {
            self.dropping_from = stream;
        }
    }

    /// Logs the note of a drop episode that has ended by `now`.
    fn end_episode(&mut self, now: Instant, sink: &impl LogSink) {
        if let Some(bytes) = self.budget.end_episode(now) {
            let origin = self.origin(self.dropping_from);
            sink.output(&origin, Output::Dropped { bytes });
        }
    }
}

/// One pipe of a worker.
struct ForwardedPipe {
    /// Key of its [`WorkerOutput`].
    worker: u64,
    stream: Stream,
    pipe: pipe::Receiver,
    lines: LineSplitter,
    /// In the forwarder's `unfinished` queue.
    queued: bool,
}

/// How far a turn read a pipe.
enum Drained {
    /// Until it would block: the next edge says when there is more.
    Empty,
    /// A turn's worth: there may be more, without another edge.
    Unfinished,
    /// To its end (or an error).
    Closed,
}

/// The forwarder thread's state.
struct Forwarder<S> {
    poll: Poll,
    new_workers: mpsc::Receiver<NewWorker>,
    sink: S,
    handles_alive: bool,
    pipes: HashMap<Token, ForwardedPipe>,
    next_token: usize,
    workers: HashMap<u64, WorkerOutput>,
    next_worker: u64,
    /// Pipes whose last turn ended before they would block, in turn order.
    unfinished: VecDeque<Token>,
    /// Workers with a drop episode under way (its note is due once it ends,
    /// even if the worker writes nothing more).
    dropping: HashSet<u64>,
    buf: Vec<u8>,
}

impl<S: LogSink> Forwarder<S> {
    fn new(poll: Poll, new_workers: mpsc::Receiver<NewWorker>, sink: S) -> Self {
        Self {
            poll,
            new_workers,
            sink,
            handles_alive: true,
            pipes: HashMap::new(),
            next_token: 1,
            workers: HashMap::new(),
            next_worker: 0,
            unfinished: VecDeque::new(),
            dropping: HashSet::new(),
            buf: vec![0u8; 16 * 1024],
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(64);
        loop {
            if !self.handles_alive && self.pipes.is_empty() {
                return;
            }
            let timeout = if self.unfinished.is_empty() {
                self.next_episode_end()
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                eprintln!("nocturne: worker log forwarder stops: {e}");
                return;
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => self.take_new_workers(),
                    token => self.turn(token),
                }
            }
            // Each pipe left unfinished gets one more turn, then waits for
            // the others again.
            for _ in 0..self.unfinished.len() {
                let Some(token) = self.unfinished.pop_front() else {
                    break;
                };
                if let Some(pipe) = self.pipes.get_mut(&token) {
                    pipe.queued = false;
                    self.turn(token);
                }
            }
            self.end_episodes();
        }
    }

    fn take_new_workers(&mut self) {
        loop {
            match self.new_workers.try_recv() {
                Ok(new) => self.add_worker(new),
                Err(mpsc::TryRecvError::Empty) => return,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.handles_alive = false;
                    return;
                }
            }
        }
    }

    fn add_worker(&mut self, new: NewWorker) {
        let worker = self.next_worker;
        self.next_worker += 1;
        self.workers.insert(
            worker,
            WorkerOutput {
                function: new.function,
                pid: new.pid,
                budget: LogBudget::new(Instant::now()),
                open_pipes: 2,
                dropping_from: Stream::Stdout,
            },
        );
        for (stream, mut pipe) in [(Stream::Stdout, new.stdout), (Stream::Stderr, new.stderr)] {
            let token = Token(self.next_token);
            self.next_token += 1;
            if self
                .poll
                .registry()
                .register(&mut pipe, token, Interest::READABLE)
                .is_err()
            {
                // Dropped: the worker's writes fail with EPIPE.
                self.pipe_closed(worker);
                continue;
            }
            self.pipes.insert(
                token,
                ForwardedPipe {
                    worker,
                    stream,
                    pipe,
                    lines: LineSplitter::default(),
                    queued: false,
                },
            );
            // Edge-triggered: read what is already there now.
            self.turn(token);
        }
    }

    /// Reads one turn from the pipe of `token`.
    fn turn(&mut self, token: Token) {
        let Some(pipe) = self.pipes.get_mut(&token) else {
            return;
        };
        let Some(worker) = self.workers.get_mut(&pipe.worker) else {
            return;
        };
        match read_turn(pipe, worker, &mut self.buf, &self.sink) {
            Drained::Empty => {}
            Drained::Unfinished => {
                if !pipe.queued {
                    pipe.queued = true;
                    self.unfinished.push_back(token);
                }
            }
            Drained::Closed => {
                let worker = pipe.worker;
                if let Some(mut pipe) = self.pipes.remove(&token) {
                    let _ = self.poll.registry().deregister(&mut pipe.pipe);
                }
                self.pipe_closed(worker);
                return;
            }
        }
        if worker.budget.dropping() {
            self.dropping.insert(pipe.worker);
        }
    }

    /// One of `worker`'s pipes is gone; the last one takes the worker, and
    /// the note of its drop episode, if one is under way.
    fn pipe_closed(&mut self, worker: u64) {
        let Some(output) = self.workers.get_mut(&worker) else {
            return;
        };
        output.open_pipes -= 1;
        if output.open_pipes > 0 {
            return;
        }
        if let Some(bytes) = output.budget.finish() {
            let origin = output.origin(output.dropping_from);
            self.sink.output(&origin, Output::Dropped { bytes });
        }
        self.workers.remove(&worker);
        self.dropping.remove(&worker);
    }

    /// When the first drop episode under way can end.
    fn next_episode_end(&self) -> Option<Duration> {
        let now = Instant::now();
        self.dropping
            .iter()
            .filter_map(|w| self.workers.get(w)?.budget.episode_ends_in(now))
            .min()
    }

    /// Logs the notes of the drop episodes that have ended.
    fn end_episodes(&mut self) {
        if self.dropping.is_empty() {
            return;
        }
        let now = Instant::now();
        let workers = &mut self.workers;
        let sink = &self.sink;
        self.dropping.retain(|w| match workers.get_mut(w) {
            Some(output) => {
                output.end_episode(now, sink);
                output.budget.dropping()
            }
            None => false,
        });
    }
}

/// Reads from `pipe` until it would block, closes, or [`TURN_BYTES`] are read.
fn read_turn(
    pipe: &mut ForwardedPipe,
    worker: &mut WorkerOutput,
    buf: &mut [u8],
    sink: &impl LogSink,
) -> Drained {
    let now = Instant::now();
    let stream = pipe.stream;
    let mut emit = |line: Line<'_>| worker.line(stream, line, now, sink);
    let mut read = 0;
    while read < TURN_BYTES {
        match pipe.pipe.read(buf) {
            Ok(0) => {
                pipe.lines.finish(&mut emit);
                return Drained::Closed;
            }
            Ok(n) => {
                read += n;
                pipe.lines.feed(&buf[..n], &mut emit);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drained::Empty,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                pipe.lines.finish(&mut emit);
                return Drained::Closed;
            }
        }
    }
    Drained::Unfinished
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: LineOrigin<'static> = LineOrigin {
        function: "foo",
        pid: 1234,
        stream: Stream::Stderr,
    };

    fn line(text: &[u8], cut: u64) -> Output<'_> {
        Output::Line(Line { text, cut })
    }

    #[test]
    fn format_tags_function_and_pid() {
        assert_eq!(
            format_output(&ORIGIN, line(b"hi", 0)),
            "[worker foo pid=1234] hi"
        );
        assert_eq!(
            format_output(&ORIGIN, line(b"\xffhi", 123456)),
            "[worker foo pid=1234] \u{fffd}hi… (123456 more bytes cut)"
        );
        // Control characters cannot overwrite the tag on a terminal.
        assert_eq!(
            format_output(&ORIGIN, line(b"a\rb\x1b[2J\tc\0", 0)),
            "[worker foo pid=1234] a\\rb\\u{1b}[2J\tc\\u{0}"
        );
        assert_eq!(
            format_output(&ORIGIN, Output::Dropped { bytes: 99 }),
            "[worker foo pid=1234] … 99 bytes of output dropped (over 256 KiB/s)"
        );
    }

    #[test]
    fn a_line_costs_what_it_takes_in_the_log() {
        let lines: [(&[u8], u64); 7] = [
            (b"", 0),
            (b"hi", 0),
            (b"\xff\xfe\xc3", 0),
            (b"caf\xc3\xa9 \xe2\x82", 9),
            (b"a\rb\x1b[2J\tc\0\x7f", 1),
            ("\u{85}\u{2028}".as_bytes(), 1_000_000_000_000),
            (&[0u8; 300], 10),
        ];
        for pid in [0, 9, 10, 4_194_304] {
            let origin = LineOrigin { pid, ..ORIGIN };
            for (text, cut) in lines {
                let l = Line { text, cut };
                assert_eq!(
                    logged_len(&origin, l),
                    format_output(&origin, Output::Line(l)).len() as u64 + 1,
                    "{text:?} cut {cut} pid {pid}"
                );
            }
        }
    }
}
