//! Worker stdout/stderr into the engine log, one line at a time, tagged
//! `[worker <function> pid=<pid>] <line>`.
//!
//! One forwarder thread per [`LogForwarder`] polls the pipes of all its workers
//! (mio, edge-triggered), far from any hot path: a worker that logs a lot costs
//! the engine this thread's time, never a core loop's. Lines are cut at
//! [`MAX_LINE_LEN`] bytes (the rest of an overlong line is dropped, the cut is
//! marked), a final line without a newline is flushed when the pipe closes, and
//! bytes that are not UTF-8 are shown lossily. Where lines go is a [`LogSink`]:
//! the engine's log by default, anything (a test's buffer) when injected.
//! The engine's log queues lines for its writer thread and drops them when
//! its reader falls behind (`crate::logger`), so a worker that logs fast
//! costs lines, not time; a slow injected sink makes the worker block in
//! `write`, as any process writing into a full pipe. Nothing is buffered
//! without bound.

use std::collections::HashMap;
use std::io::{self, Read};
use std::process::{ChildStderr, ChildStdout};
use std::sync::{mpsc, Arc, OnceLock};

use mio::unix::pipe;
use mio::{Events, Interest, Poll, Token, Waker};

/// Longest line forwarded; the rest of a longer line is dropped.
pub const MAX_LINE_LEN: usize = 4096;

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
    /// Which stream.
    pub stream: Stream,
}

/// Receives forwarded lines. Called on the forwarder thread, one line at a time.
pub trait LogSink: Send + Sync + 'static {
    /// One line, without its newline (or a cut line when `truncated`).
    fn line(&self, origin: &LineOrigin<'_>, line: &[u8], truncated: bool);
}

impl<F> LogSink for F
where
    F: Fn(&LineOrigin<'_>, &[u8], bool) + Send + Sync + 'static,
{
    fn line(&self, origin: &LineOrigin<'_>, line: &[u8], truncated: bool) {
        self(origin, line, truncated)
    }
}

/// The default sink: [`format_line`] on the engine's stderr.
#[derive(Clone, Copy, Debug, Default)]
pub struct StderrSink;

impl LogSink for StderrSink {
    fn line(&self, origin: &LineOrigin<'_>, line: &[u8], truncated: bool) {
        // Through the engine's log queue: a stalled reader costs lines,
        // never a worker blocked on its output pipe.
        crate::logger::line(format_line(origin, line, truncated));
    }
}

/// `[worker foo pid=1234] <line>`, with ` [truncated]` after a cut line.
/// Control characters but tab are escaped (`\r`, `\u{1b}`): a worker's
/// carriage return or terminal escape must not overwrite the tag, or other
/// lines, on the operator's terminal.
pub fn format_line(origin: &LineOrigin<'_>, line: &[u8], truncated: bool) -> String {
    let mut text = String::with_capacity(line.len());
    for c in String::from_utf8_lossy(line).chars() {
        if c.is_control() && c != '\t' {
            text.extend(c.escape_default());
        } else {
            text.push(c);
        }
    }
    let mark = if truncated { " [truncated]" } else { "" };
    format!(
        "[worker {} pid={}] {text}{mark}",
        origin.function, origin.pid
    )
}

/// Cuts a byte stream into lines of at most [`MAX_LINE_LEN`] bytes.
#[derive(Debug, Default)]
pub(crate) struct LineSplitter {
    partial: Vec<u8>,
    /// Inside an overlong line whose head was already emitted.
    discarding: bool,
}

impl LineSplitter {
    /// Feeds bytes; `emit(line, truncated)` is called for every finished line.
    pub(crate) fn feed(&mut self, mut data: &[u8], emit: &mut dyn FnMut(&[u8], bool)) {
        while !data.is_empty() {
            let (segment, ends_line, rest) = match data.iter().position(|&b| b == b'\n') {
                Some(i) => (&data[..i], true, &data[i + 1..]),
                None => (data, false, &data[data.len()..]),
            };
            if !self.discarding {
                let room = MAX_LINE_LEN - self.partial.len();
                if segment.len() > room {
                    self.partial.extend_from_slice(&segment[..room]);
                    emit(&self.partial, true);
                    self.partial.clear();
                    self.discarding = true;
                } else {
                    self.partial.extend_from_slice(segment);
                }
            }
            if ends_line {
                if !self.discarding {
                    emit(strip_cr(&self.partial), false);
                    self.partial.clear();
                }
                self.discarding = false;
            }
            data = rest;
        }
    }

    /// The stream ended: emits a last line that had no newline.
    pub(crate) fn finish(&mut self, emit: &mut dyn FnMut(&[u8], bool)) {
        if !self.partial.is_empty() && !self.discarding {
            emit(strip_cr(&self.partial), false);
        }
        self.partial.clear();
        self.discarding = false;
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// A pipe handed to the forwarder thread.
struct NewPipe {
    function: Arc<str>,
    pid: u32,
    stream: Stream,
    pipe: pipe::Receiver,
}

/// A handle on a forwarder thread; cheap to clone. The thread ends once every
/// handle is dropped and every pipe it forwards has closed.
#[derive(Clone)]
pub struct LogForwarder {
    inner: Arc<Handle>,
}

struct Handle {
    new_pipes: mpsc::Sender<NewPipe>,
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
            .spawn(move || forward_loop(poll, rx, sink))?;
        Ok(Self {
            inner: Arc::new(Handle {
                new_pipes: tx,
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
        let function: Arc<str> = Arc::from(function);
        let pipes = [
            (Stream::Stdout, pipe::Receiver::from(stdout)),
            (Stream::Stderr, pipe::Receiver::from(stderr)),
        ];
        for (stream, pipe) in pipes {
            pipe.set_nonblocking(true)?;
            let new = NewPipe {
                function: Arc::clone(&function),
                pid,
                stream,
                pipe,
            };
            self.inner.new_pipes.send(new).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the log forwarder thread is gone",
                )
            })?;
        }
        self.inner.waker.wake()
    }
}

struct Forwarded {
    function: Arc<str>,
    pid: u32,
    stream: Stream,
    pipe: pipe::Receiver,
    lines: LineSplitter,
}

fn forward_loop(mut poll: Poll, new_pipes: mpsc::Receiver<NewPipe>, sink: impl LogSink) {
    let mut events = Events::with_capacity(64);
    let mut pipes: HashMap<Token, Forwarded> = HashMap::new();
    let mut next_token = 1usize;
    let mut handles_alive = true;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !handles_alive && pipes.is_empty() {
            return;
        }
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            eprintln!("nocturne: worker log forwarder stops: {e}");
            return;
        }
        for event in events.iter() {
            let token = event.token();
            if token == WAKER {
                loop {
                    match new_pipes.try_recv() {
                        Ok(new) => {
                            let token = Token(next_token);
                            next_token += 1;
                            let mut fwd = Forwarded {
                                function: new.function,
                                pid: new.pid,
                                stream: new.stream,
                                pipe: new.pipe,
                                lines: LineSplitter::default(),
                            };
                            if poll
                                .registry()
                                .register(&mut fwd.pipe, token, Interest::READABLE)
                                .is_ok()
                            {
                                // Edge-triggered: read what is already there now.
                                if drain(&mut fwd, &mut buf, &sink) {
                                    let _ = poll.registry().deregister(&mut fwd.pipe);
                                } else {
                                    pipes.insert(token, fwd);
                                }
                            }
                        }
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => {
                            handles_alive = false;
                            break;
                        }
                    }
                }
                continue;
            }
            let closed = match pipes.get_mut(&token) {
                Some(fwd) => drain(fwd, &mut buf, &sink),
                None => false,
            };
            if closed {
                if let Some(mut fwd) = pipes.remove(&token) {
                    let _ = poll.registry().deregister(&mut fwd.pipe);
                }
            }
        }
    }
}

/// Reads until the pipe would block; true when it reached EOF (or failed).
fn drain(fwd: &mut Forwarded, buf: &mut [u8], sink: &impl LogSink) -> bool {
    let origin = LineOrigin {
        function: &fwd.function,
        pid: fwd.pid,
        stream: fwd.stream,
    };
    let mut emit = |line: &[u8], truncated: bool| sink.line(&origin, line, truncated);
    loop {
        match fwd.pipe.read(buf) {
            Ok(0) => {
                fwd.lines.finish(&mut emit);
                return true;
            }
            Ok(n) => fwd.lines.feed(&buf[..n], &mut emit),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                fwd.lines.finish(&mut emit);
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        let mut s = LineSplitter::default();
        let mut emit =
            |line: &[u8], t: bool| out.push((String::from_utf8_lossy(line).into_owned(), t));
        for c in chunks {
            s.feed(c, &mut emit);
        }
        s.finish(&mut emit);
        out
    }

    #[test]
    fn lines_split_across_chunks() {
        let got = split(&[b"hel", b"lo\nwor", b"ld\r\n\nlast"]);
        let want = [
            ("hello", false),
            ("world", false),
            ("", false),
            ("last", false),
        ];
        assert_eq!(got, want.map(|(l, t)| (l.to_string(), t)));
    }

    #[test]
    fn overlong_lines_are_cut_once() {
        let long = vec![b'x'; MAX_LINE_LEN * 2 + 10];
        let exact = vec![b'y'; MAX_LINE_LEN];
        let got = split(&[&long[..100], &long[100..], b"\n", &exact, b"\nnext\n"]);
        assert_eq!(
            got.len(),
            3,
            "{:?}",
            got.iter().map(|(l, t)| (l.len(), *t)).collect::<Vec<_>>()
        );
        assert_eq!(got[0], ("x".repeat(MAX_LINE_LEN), true));
        assert_eq!(got[1], ("y".repeat(MAX_LINE_LEN), false));
        assert_eq!(got[2], ("next".to_string(), false));
    }

    #[test]
    fn overlong_unterminated_line_is_not_emitted_twice() {
        let long = vec![b'z'; MAX_LINE_LEN + 1];
        let got = split(&[&long]);
        assert_eq!(got, vec![("z".repeat(MAX_LINE_LEN), true)]);
    }

    #[test]
    fn format_tags_function_and_pid() {
        let origin = LineOrigin {
            function: "foo",
            pid: 1234,
            stream: Stream::Stderr,
        };
        assert_eq!(
            format_line(&origin, b"hi", false),
            "[worker foo pid=1234] hi"
        );
        assert_eq!(
            format_line(&origin, b"\xffhi", true),
            "[worker foo pid=1234] \u{fffd}hi [truncated]"
        );
        // Control characters cannot overwrite the tag on a terminal.
        assert_eq!(
            format_line(&origin, b"a\rb\x1b[2J\tc\0", false),
            "[worker foo pid=1234] a\\rb\\u{1b}[2J\tc\\u{0}"
        );
    }
}
