//! The ways this worker answers a call: normally, or by breaking the protocol
//! in one precise way (the `?do=` of the call, or `MISBEHAVE_DO`).
//!
//! Each abuse is aimed at one check of the engine's receive path; the unit
//! tests below hold the engine's own `Receiver` against each one (over a heap
//! region), so the end-to-end tests know the engine sees exactly the lie they
//! mean. Abuses fall into four groups:
//!
//! * **raw lies** — words written straight into the response ring past the
//!   SDK ([`RawChannel::publish`]): a bad placement, an inline length beyond
//!   the slot, an arena payload at the wrong offset or longer than the arena,
//!   a sequence word from another lap;
//! * **well-formed lies** — valid messages through the normal `Sender` that
//!   the call protocol forbids: an unknown kind, a completion for another call,
//!   an internal call under a parent the worker is not running, a flood of
//!   completions nobody asked for. Where it makes sense the worker then also
//!   sends the correct completion, which the engine must no longer accept;
//! * **a lie the engine reads later** — `bad-release` keeps overwriting the
//!   request ring's release index (the consumer's word) with a position the
//!   engine never reached, and otherwise serves normally: the engine's sender
//!   trips over it once its cached copy says the ring is full;
//! * **resize attempts** — `ftruncate`/`fallocate`/`F_ADD_SEALS` on the region's
//!   memfd, which its seals must refuse with `EPERM`; the call then completes
//!   normally with what happened.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use nocturne_functions::protocol;
use nocturne_ipc::channel::{SendError, Sender};
use nocturne_ipc::message::{Header, Kind, PayloadLocation, BODY_WORDS};
use nocturne_ipc::region::Region;

use crate::raw::RawChannel;

/// What to do with a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Answer `ok from pid N`.
    Normal,
    /// Publish a header whose placement field is neither inline nor arena.
    CorruptHeader,
    /// Publish an inline payload longer than a slot.
    CorruptLength,
    /// Publish an arena payload at an offset the arena protocol forbids.
    BadArenaOffset,
    /// Publish an arena payload longer than the arena.
    ArenaTooLong,
    /// Publish a sequence word from a future lap.
    BadSequence,
    /// Send a message of a kind the protocol does not define, then the real answer.
    UnknownKind,
    /// Complete a call the worker is not running, then the real one.
    WrongCallId,
    /// Start an internal call under a parent the worker is not running.
    BadParent,
    /// Fill the response ring with completions nobody asked for.
    Flood,
    /// From now on, after every message taken, overwrite the request ring's
    /// release index with a position beyond anything the engine sent; serve
    /// normally otherwise.
    BadRelease,
    /// Answer the call, then flood the ring as [`Mode::Flood`] (a violation by
    /// an idle worker).
    CompleteThenFlood,
    /// `ftruncate` the region to 0 bytes (must fail: `F_SEAL_SHRINK`).
    TruncateRegion,
    /// `ftruncate` and `fallocate` the region larger (must fail: `F_SEAL_GROW`).
    GrowRegion,
    /// Add `F_SEAL_WRITE` to the region (must fail: `F_SEAL_SEAL`).
    SealWrite,
    /// Answer with status 101, which HTTP cannot carry as a final answer
    /// (the protocol allows it; the engine must still answer the client).
    Status101,
    /// Answer with a content type holding CR/LF (response splitting).
    SplitContentType,
}

/// Every mode with its `?do=` name.
pub const MODES: &[(&str, Mode)] = &[
    ("none", Mode::Normal),
    ("corrupt-header", Mode::CorruptHeader),
    ("corrupt-length", Mode::CorruptLength),
    ("bad-arena-offset", Mode::BadArenaOffset),
    ("arena-too-long", Mode::ArenaTooLong),
    ("bad-sequence", Mode::BadSequence),
    ("unknown-kind", Mode::UnknownKind),
    ("wrong-call-id", Mode::WrongCallId),
    ("bad-parent", Mode::BadParent),
    ("flood", Mode::Flood),
    ("bad-release", Mode::BadRelease),
    ("complete-then-flood", Mode::CompleteThenFlood),
    ("truncate-region", Mode::TruncateRegion),
    ("grow-region", Mode::GrowRegion),
    ("seal-write", Mode::SealWrite),
    ("status-101", Mode::Status101),
    ("split-content-type", Mode::SplitContentType),
];

impl Mode {
    /// The mode named `name` (a `?do=` value).
    pub fn parse(name: &str) -> Option<Mode> {
        MODES.iter().find(|(n, _)| *n == name).map(|&(_, m)| m)
    }

    /// Its `?do=` name.
    pub fn name(self) -> &'static str {
        MODES
            .iter()
            .find(|&&(_, m)| m == self)
            .map(|&(n, _)| n)
            .expect("every mode is listed")
    }
}

/// What the worker does after a call.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    /// Its channel is consistent: serve the next call.
    Serve,
    /// It broke the protocol: send nothing more and wait to be killed.
    AwaitDisconnect,
}

/// Call ids of the completions nobody asked for (far from any engine id).
const BOGUS_CALL_ID: u64 = 0xdead_beef_0000_0000;

/// The release index `bad-release` claims: far beyond any position the
/// engine's request ring will reach.
pub const BOGUS_RELEASE: u64 = 1 << 50;

/// A worker's response side: the SDK's `Sender` and the raw view of the same ring.
pub struct Responder<'r, R: Region> {
    pub sender: Sender<R>,
    pub raw: RawChannel<'r>,
    /// The region's memfd, for the resize attempts (`None` over a heap region).
    pub memfd: Option<BorrowedFd<'r>>,
    /// The region's length in bytes.
    pub region_len: usize,
    /// Set by [`Mode::BadRelease`]: keep lying about the request ring.
    pub lying_about_release: bool,
}

impl<R: Region> Responder<'_, R> {
    /// Called after each message taken from the request ring (whose drop
    /// stored the true release index).
    pub fn after_receive(&mut self) {
        if self.lying_about_release {
            self.raw.write_request_release(BOGUS_RELEASE);
        }
    }

    /// Runs `mode` for the call `call` (the engine's `Invoke` header); `t0_ns`
    /// is when the worker took it.
    pub fn act(&mut self, mode: Mode, call: &Header, t0_ns: u64) -> After {
        let answer = Header {
            kind: Kind::Complete,
            call_id: call.call_id,
            t0_ns,
            status: protocol::STATUS_OK,
            ..Header::default()
        };
        match mode {
            Mode::Normal => {
                let body = format!("ok from pid {}", std::process::id());
                self.complete(&answer, body.as_bytes())
            }
            Mode::Status101 => self.complete(
                &Header {
                    status: 101,
                    ..answer
                },
                b"switching?",
            ),
            Mode::SplitContentType => {
                let mut body = Vec::new();
                protocol::encode_content_type_prefix(&mut body, "text/plain\r\nX-Injected: yes");
                body.extend_from_slice(b"split");
                let flags = answer.flags | protocol::FLAG_CONTENT_TYPE;
                self.complete(&Header { flags, ..answer }, &body)
            }
            Mode::CorruptHeader => {
                let mut words = answer.to_words(PayloadLocation::Inline { len: 0 });
                // Word 5 holds payload_len | status << 32 | placement << 48.
                words[5] = (words[5] & !(0xffff << 48)) | (0x7777u64.to_le() << 48);
                self.publish_raw(&words)
            }
            Mode::CorruptLength => {
                let words = answer.to_words(PayloadLocation::Inline { len: u32::MAX });
                self.publish_raw(&words)
            }
            Mode::BadArenaOffset => {
                // The worker has sent nothing through its arena, so the only
                // offset the engine may accept is 0.
                let offset = (self.raw.arena_bytes() / 2) & !63;
                let words = answer.to_words(PayloadLocation::Arena {
                    offset: offset.max(64),
                    len: 100,
                });
                self.publish_raw(&words)
            }
            Mode::ArenaTooLong => {
                let words = answer.to_words(PayloadLocation::Arena {
                    offset: 0,
                    len: self.raw.arena_bytes().saturating_add(64),
                });
                self.publish_raw(&words)
            }
            Mode::BadSequence => {
                let words = answer.to_words(PayloadLocation::Inline { len: 0 });
                let pos = self.sender.sent();
                // Ready would be pos + 1; one lap later is neither ready nor empty.
                let seq = pos + 1 + u64::from(self.raw.capacity());
                self.raw.publish(pos, &words, seq);
                self.sender.notify();
                say(&format!(
                    "published sequence {seq} at position {pos} (ready would be {})",
                    pos + 1
                ));
                After::AwaitDisconnect
            }
            Mode::UnknownKind => {
                let odd = Header {
                    kind: Kind::Unknown(0x4242),
                    ..answer
                };
                self.send_lie(&odd, b"what is this?");
                self.send_lie(&answer, b"the real answer, too late");
                After::AwaitDisconnect
            }
            Mode::WrongCallId => {
                let other = Header {
                    call_id: call.call_id ^ (1 << 40),
                    ..answer
                };
                self.send_lie(&other, b"an answer to a call I never got");
                self.send_lie(&answer, b"the real answer, too late");
                After::AwaitDisconnect
            }
            Mode::BadParent => {
                let invoke = Header {
                    kind: Kind::Invoke,
                    function_id: 0,
                    call_id: 1,
                    parent_call_id: call.call_id ^ (1 << 40),
                    t0_ns,
                    ..Header::default()
                };
                self.send_lie(&invoke, b"a call under a parent I am not running");
                After::AwaitDisconnect
            }
            Mode::Flood => {
                self.flood();
                After::AwaitDisconnect
            }
            Mode::BadRelease => {
                if !self.lying_about_release {
                    say(&format!(
                        "from now on the request ring's release index says {BOGUS_RELEASE}"
                    ));
                }
                self.lying_about_release = true;
                self.after_receive();
                let body = format!("ok from pid {}", std::process::id());
                self.complete(&answer, body.as_bytes())
            }
            Mode::CompleteThenFlood => {
                let body = format!("ok from pid {}", std::process::id());
                self.complete(&answer, body.as_bytes());
                self.flood();
                After::AwaitDisconnect
            }
            Mode::TruncateRegion => {
                let attempts = [("ftruncate(region, 0)", Resize::Truncate(0))];
                self.resize(&answer, &attempts)
            }
            Mode::GrowRegion => {
                let len = self.region_len as libc::off_t;
                let attempts = [
                    ("ftruncate(region, 2 x len)", Resize::Truncate(2 * len)),
                    ("fallocate(region, len, 4096)", Resize::Allocate(len, 4096)),
                ];
                self.resize(&answer, &attempts)
            }
            Mode::SealWrite => {
                let attempts = [(
                    "fcntl(region, F_ADD_SEALS, F_SEAL_WRITE)",
                    Resize::SealWrite,
                )];
                self.resize(&answer, &attempts)
            }
        }
    }

    /// Sends a correct completion (waiting while the ring is full).
    fn complete(&mut self, answer: &Header, body: &[u8]) -> After {
        let header = Header {
            t1_ns: protocol::monotonic_ns(),
            ..*answer
        };
        loop {
            match self.sender.try_send(&header, body) {
                Ok(()) => return After::Serve,
                Err(SendError::RingFull) | Err(SendError::ArenaFull) => std::thread::yield_now(),
                Err(e) => {
                    say(&format!("cannot send a completion: {e}"));
                    return After::AwaitDisconnect;
                }
            }
        }
    }

    /// Sends a well-formed message the protocol forbids here.
    fn send_lie(&mut self, header: &Header, body: &[u8]) {
        match self.sender.try_send(header, body) {
            Ok(()) => say(&format!(
                "sent {:?} for call {:#x} (parent {:#x})",
                header.kind, header.call_id, header.parent_call_id
            )),
            Err(e) => say(&format!("could not even send the lie: {e}")),
        }
    }

    fn publish_raw(&mut self, words: &[u64; BODY_WORDS]) -> After {
        let pos = self.sender.sent();
        self.raw.publish(pos, words, pos + 1);
        // An engine asleep in epoll learns of the slot through the doorbell.
        self.sender.notify();
        say(&format!(
            "published raw header words {words:x?} at position {pos}"
        ));
        After::AwaitDisconnect
    }

    /// Completions for calls nobody made, until the ring is full.
    fn flood(&mut self) {
        let bound = 4 * u64::from(self.raw.capacity());
        let mut sent = 0u64;
        while sent < bound {
            let bogus = Header {
                kind: Kind::Complete,
                call_id: BOGUS_CALL_ID + sent,
                status: protocol::STATUS_OK,
                ..Header::default()
            };
            match self.sender.try_send(&bogus, b"nobody asked for this") {
                Ok(()) => sent += 1,
                Err(_) => break,
            }
        }
        say(&format!(
            "flooded the response ring with {sent} unsolicited completions"
        ));
    }

    /// Tries to change the region's size or seals; every attempt must fail
    /// with `EPERM`. Answers 200 `refused: …` if they all did, else 500.
    fn resize(&mut self, answer: &Header, attempts: &[(&str, Resize)]) -> After {
        let Some(fd) = self.memfd else {
            return self.complete(
                &Header {
                    status: protocol::STATUS_HANDLER_ERROR,
                    ..*answer
                },
                b"no memfd to resize",
            );
        };
        let mut report = Vec::new();
        let mut all_refused = true;
        for (what, attempt) in attempts {
            let line = match attempt.run(fd) {
                Ok(()) => {
                    all_refused = false;
                    format!("{what} SUCCEEDED: the region is not sealed")
                }
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    format!("{what} refused: EPERM ({e}), as the seals require")
                }
                Err(e) => {
                    all_refused = false;
                    format!("{what} failed with {e}, not EPERM")
                }
            };
            say(&line);
            report.push(line);
        }
        let status = if all_refused {
            protocol::STATUS_OK
        } else {
            protocol::STATUS_HANDLER_ERROR
        };
        self.complete(&Header { status, ..*answer }, report.join("; ").as_bytes())
    }
}

/// One attempt at changing the region under the engine.
enum Resize {
    /// `ftruncate` to this length.
    Truncate(libc::off_t),
    /// `fallocate` this range (offset, length).
    Allocate(libc::off_t, libc::off_t),
    /// Add `F_SEAL_WRITE`.
    SealWrite,
}

impl Resize {
    #[allow(unsafe_code)]
    fn run(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let fd = fd.as_raw_fd();
        let rc = match *self {
            // SAFETY: ftruncate on an open descriptor; no memory is passed.
            Resize::Truncate(len) => unsafe { libc::ftruncate(fd, len) },
            // SAFETY: fallocate on an open descriptor; no memory is passed.
            Resize::Allocate(off, len) => unsafe { libc::fallocate(fd, 0, off, len) },
            // SAFETY: fcntl(F_ADD_SEALS) on an open descriptor; no memory is passed.
            Resize::SealWrite => unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_WRITE) },
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// A line on stderr, which the engine forwards to its log tagged with the
/// function and pid.
pub fn say(line: &str) {
    eprintln!("misbehave: {line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;

    use nocturne_ipc::arena::ArenaError;
    use nocturne_ipc::channel::{ChannelConfig, EngineEnd, Receiver, RecvError, WorkerEnd};
    use nocturne_ipc::message::HeaderError;
    use nocturne_ipc::region::{HeapRegion, MemfdRegion};
    use nocturne_ipc::ring::ProtocolError;

    /// One heap region shared by the engine end, the worker end and the raw view.
    struct Shared(Arc<HeapRegion>);

    // SAFETY: forwards both methods unchanged to the `HeapRegion`, which
    // upholds the contract and is kept alive by the `Arc` this value holds;
    // each test creates its channel (`EngineEnd::create_in`) before it
    // attaches its one worker end (and the raw view) to the same heap.
    #[allow(unsafe_code)]
    unsafe impl Region for Shared {
        fn base(&self) -> *mut u8 {
            self.0.base()
        }
        fn len(&self) -> usize {
            self.0.len()
        }
    }

    const CFG: ChannelConfig = ChannelConfig {
        ring_slots: 8,
        slot_size: 256,
        arena_bytes: 4096,
    };

    /// A message as the engine received it: kind, call id, status, payload.
    type Seen = Result<(Kind, u64, u16, Vec<u8>), RecvError>;

    /// A channel of `CFG` over `heap` with its worker end driven by a
    /// [`Responder`] (honest so far), and the call both tests answer.
    struct OverHeap<'r> {
        /// The engine's halves: requests out, responses in.
        requests: Sender<Shared>,
        responses: Receiver<Shared>,
        /// The worker's request receiver.
        calls: Receiver<Shared>,
        responder: Responder<'r, Shared>,
        /// An `Invoke` for call 0x77.
        call: Header,
    }

    fn over_heap(heap: &Arc<HeapRegion>) -> OverHeap<'_> {
        let engine = EngineEnd::create_in(Shared(heap.clone()), &CFG, None).unwrap();
        let worker = WorkerEnd::attach_region(Arc::new(Shared(heap.clone())), None).unwrap();
        let (requests, responses) = engine.split();
        let (sender, calls) = worker.split();
        let responder = Responder {
            sender,
            raw: RawChannel::new(&**heap).unwrap(),
            memfd: None,
            region_len: heap.len(),
            lying_about_release: false,
        };
        let call = Header {
            kind: Kind::Invoke,
            call_id: 0x77,
            ..Header::default()
        };
        OverHeap {
            requests,
            responses,
            calls,
            responder,
            call,
        }
    }

    /// The engine's receiver of the response ring and a worker responder
    /// over the same heap region; runs `mode` for call 0x77 and returns what
    /// the engine receives, in order, until the ring is empty or broken.
    fn engine_sees(mode: Mode) -> (After, Vec<Seen>) {
        let heap = Arc::new(HeapRegion::new(CFG.region_len()));
        let OverHeap {
            requests: _requests,
            mut responses,
            calls: _calls,
            mut responder,
            call,
        } = over_heap(&heap);
        let after = responder.act(mode, &call, 1);
        let mut seen = Vec::new();
        loop {
            match responses.try_recv() {
                Ok(None) => break,
                Ok(Some(msg)) => {
                    let h = *msg.header();
                    seen.push(Ok((h.kind, h.call_id, h.status, msg.payload().to_vec())));
                }
                Err(e) => {
                    seen.push(Err(e));
                    break;
                }
            }
        }
        (after, seen)
    }

    fn only_error(mode: Mode) -> RecvError {
        let (after, seen) = engine_sees(mode);
        assert_eq!(after, After::AwaitDisconnect, "{mode:?}");
        match seen.as_slice() {
            [Err(e)] => *e,
            other => panic!("{mode:?}: expected one receive error, got {other:?}"),
        }
    }

    #[test]
    fn names_round_trip() {
        for &(name, mode) in MODES {
            assert_eq!(Mode::parse(name), Some(mode));
            assert_eq!(mode.name(), name);
        }
        assert_eq!(Mode::parse("nonsense"), None);
    }

    #[test]
    fn normal_mode_completes_the_call() {
        let (after, seen) = engine_sees(Mode::Normal);
        assert_eq!(after, After::Serve);
        let [Ok((kind, id, status, body))] = seen.as_slice() else {
            panic!("{seen:?}")
        };
        assert_eq!((*kind, *id, *status), (Kind::Complete, 0x77, 200));
        assert!(String::from_utf8_lossy(body).starts_with("ok from pid "));
    }

    #[test]
    fn raw_lies_are_the_receive_errors_they_aim_at() {
        assert!(matches!(
            only_error(Mode::CorruptHeader),
            RecvError::Header(HeaderError::BadPlacement(0x7777))
        ));
        assert!(matches!(
            only_error(Mode::CorruptLength),
            RecvError::BadLength { len: u32::MAX, .. }
        ));
        assert!(matches!(
            only_error(Mode::BadArenaOffset),
            RecvError::Arena(ArenaError::BadOffset {
                found: 2048,
                expected: 0
            })
        ));
        assert!(matches!(
            only_error(Mode::ArenaTooLong),
            RecvError::Arena(ArenaError::TooLong { .. })
        ));
        assert!(matches!(
            only_error(Mode::BadSequence),
            RecvError::Ring(ProtocolError::BadSequence {
                pos: 0,
                found: 9,
                ready: 1
            })
        ));
    }

    #[test]
    fn well_formed_lies_arrive_as_sent() {
        let (after, seen) = engine_sees(Mode::UnknownKind);
        assert_eq!(after, After::AwaitDisconnect);
        let kinds: Vec<_> = seen.iter().map(|m| m.as_ref().unwrap().0).collect();
        assert_eq!(kinds, [Kind::Unknown(0x4242), Kind::Complete]);

        let (_, seen) = engine_sees(Mode::WrongCallId);
        let ids: Vec<_> = seen.iter().map(|m| m.as_ref().unwrap().1).collect();
        assert_eq!(ids, [0x77 ^ (1 << 40), 0x77]);

        let (_, seen) = engine_sees(Mode::BadParent);
        let [Ok((Kind::Invoke, 1, _, _))] = seen.as_slice() else {
            panic!("{seen:?}")
        };
    }

    #[test]
    fn bad_release_trips_the_engine_sender_once_its_cache_runs_out() {
        let heap = Arc::new(HeapRegion::new(CFG.region_len()));
        let OverHeap {
            mut requests,
            responses: _responses,
            mut calls,
            mut responder,
            call,
        } = over_heap(&heap);
        requests.try_send(&call, b"").unwrap();
        drop(calls.try_recv().unwrap().expect("the call"));
        responder.after_receive();
        assert_eq!(responder.act(Mode::BadRelease, &call, 1), After::Serve);
        // The engine's cached release index lets it fill the ring once more;
        // then it reads the lie.
        let mut sent = 1;
        let err = loop {
            match requests.try_send(&call, b"") {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent <= 2 * CFG.ring_slots, "the lie was never read");
        };
        assert!(
            matches!(
                err,
                SendError::Protocol(ProtocolError::BadRelease {
                    release: BOGUS_RELEASE,
                    ..
                })
            ),
            "{err}"
        );
    }

    #[test]
    fn flood_fills_the_ring_with_unasked_completions() {
        let (after, seen) = engine_sees(Mode::Flood);
        assert_eq!(after, After::AwaitDisconnect);
        assert_eq!(seen.len(), CFG.ring_slots as usize);
        assert!(seen
            .iter()
            .all(|m| m.as_ref().is_ok_and(|m| m.1 >= BOGUS_CALL_ID)));

        let (_, seen) = engine_sees(Mode::CompleteThenFlood);
        assert_eq!(seen.len(), CFG.ring_slots as usize);
        assert_eq!(seen[0].as_ref().unwrap().1, 0x77);
    }

    #[test]
    fn seals_refuse_every_resize_attempt_that_works_on_an_unsealed_memfd() {
        let sealed = EngineEnd::create(&CFG, "misbehave-test").unwrap();
        let len = CFG.region_len() as libc::off_t;
        let attempts = [
            Resize::Truncate(0),
            Resize::Truncate(2 * len),
            Resize::Allocate(len, 4096),
            Resize::SealWrite,
        ];
        for attempt in &attempts {
            let e = attempt.run(sealed.region_fd()).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
        }
        // The same calls do change a memfd without the seals.
        let open = MemfdRegion::create("misbehave-test-unsealed", 4096).unwrap();
        Resize::Truncate(8192).run(open.fd()).unwrap();
        Resize::Allocate(8192, 4096).run(open.fd()).unwrap();
    }

    #[test]
    fn finds_the_channel_memfd_among_open_descriptors() {
        let _ours = EngineEnd::create(&CFG, "misbehave-find").unwrap();
        let found = crate::raw::find_own_region().unwrap();
        let raw = RawChannel::new(&found).unwrap();
        assert_eq!(raw.capacity(), CFG.ring_slots);
        assert_eq!(raw.arena_bytes(), CFG.arena_bytes);
    }

    #[test]
    fn resize_attempts_without_a_memfd_fail_the_call() {
        let (after, seen) = engine_sees(Mode::TruncateRegion);
        assert_eq!(after, After::Serve);
        let [Ok((Kind::Complete, 0x77, 500, _))] = seen.as_slice() else {
            panic!("{seen:?}")
        };
    }
}
