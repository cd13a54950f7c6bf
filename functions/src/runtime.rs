//! The worker runtime: the loop a worker process runs after its handshake.
//!
//! One worker serves one call at a time. It waits on its request ring with the
//! wait policy the engine chose for its placement, runs the handler (catching
//! panics), and writes the completion into its response ring. While a handler
//! waits for internal calls, the same loop receives their completions and parks
//! them by local id until the handler asks for them.

use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::time::Duration;

use nocturne_ipc::channel::{Receiver, RecvError, SendError, Sender, WaitPolicy};
use nocturne_ipc::message::{Header, Kind};

use crate::ctx::{Ctx, InvokeError};
use crate::handler::BoxedHandler;
use crate::protocol;

/// Why the worker loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The engine wrote something the protocol does not allow.
    #[error("protocol error on the request ring: {0}")]
    Protocol(String),
    /// A completion could not be sent back.
    #[error("cannot send to the engine: {0}")]
    Send(String),
}

/// Result of an internal call, parked until the handler waits for it.
type Parked = Result<Vec<u8>, InvokeError>;

/// A worker seated on a wake board whose calls come at least this far apart
/// (from its last completion to the engine's next call) parks at once while
/// another worker of its core polls, and leaves its wake to that one; one
/// whose calls come closer keeps polling.
///
/// Parked, a call costs it a delegated wake, ≈ 3–4 µs on the 2-core VM (a
/// wake issued on the sleeper's own core, docs/benchmarks.md); polling, it
/// is a second yielder that every other tenant of the core (the client, the
/// worker that runs) waits behind. `bar` in the chain, whose next call is a
/// whole client round trip away (≥ 15 µs there), is better off parked; the
/// callee of a loop of internal calls, invoked every 2–3 µs, polling
/// (measured on the VM: `internal-call/spin` 3.6 µs polling, 7.4–11 µs
/// parked). The gap is the engine's dispatch time of the call (its header's
/// `t0_ns`) minus the worker's send of its last completion, so the wake
/// itself does not count in it.
pub const PARK_BESIDE_A_POLLER_AFTER: Duration = Duration::from_micros(10);

/// A worker's channel state, shared by its loop and its handlers' [`Ctx`].
pub struct Runtime {
    function_name: String,
    sender: Sender,
    receiver: Receiver,
    wait: WaitPolicy,
    /// Function name → id, sent by the engine in the handshake.
    functions: HashMap<String, u32>,
    /// Internal calls in flight: local id → callee name.
    in_flight: HashMap<u64, String>,
    /// Completed internal calls nobody has waited for yet.
    parked: HashMap<u64, Parked>,
    next_local_id: u64,
    /// When this worker sent its last completion (monotonic ns).
    last_completion_ns: u64,
    /// Between that completion and the next call's dispatch (ns).
    last_gap_ns: u64,
    /// Reused buffers, so a steady stream of calls allocates nothing here.
    input: Vec<u8>,
    query: String,
    scratch: Vec<u8>,
}

impl Runtime {
    /// Wraps an attached channel.
    pub fn new(
        function_name: String,
        sender: Sender,
        receiver: Receiver,
        wait: WaitPolicy,
        functions: impl IntoIterator<Item = (String, u32)>,
    ) -> Self {
        Self {
            function_name,
            sender,
            receiver,
            wait,
            functions: functions.into_iter().collect(),
            in_flight: HashMap::new(),
            parked: HashMap::new(),
            next_local_id: 1,
            last_completion_ns: 0,
            last_gap_ns: u64::MAX,
            input: Vec::new(),
            query: String::new(),
            scratch: Vec::new(),
        }
    }

    pub(crate) fn function_name(&self) -> &str {
        &self.function_name
    }

    /// Serves calls with `handler` until the channel breaks. (The engine ends a
    /// worker by closing its control socket, which a watchdog thread turns into
    /// process exit; this loop itself never needs to notice.)
    pub fn run(&mut self, handler: &mut BoxedHandler) -> RuntimeError {
        let park_after = PARK_BESIDE_A_POLLER_AFTER.as_nanos() as u64;
        loop {
            self.receiver
                .park_beside_a_poller(self.last_gap_ns >= park_after);
            self.receiver.wait(&self.wait, None);
            // The input is copied out and the view dropped (the request
            // released) before the handler runs. The engine relies on that:
            // a call its dead worker never released never ran, and goes to
            // another worker (worker contract, docs/architecture.md).
            let call_id = match self.receiver.try_recv() {
                Ok(None) => continue,
                Err(e) => return RuntimeError::Protocol(e.to_string()),
                Ok(Some(msg)) => {
                    let header = *msg.header();
                    match header.kind {
                        Kind::Invoke => {
                            let (query, input) = match protocol::split_query(&header, msg.payload())
                            {
                                Ok(parts) => parts,
                                Err(e) => return RuntimeError::Protocol(e.to_string()),
                            };
                            self.input.clear();
                            self.input.extend_from_slice(input);
                            self.query.clear();
                            self.query.push_str(query.unwrap_or(""));
                            self.last_gap_ns = header.t0_ns.saturating_sub(self.last_completion_ns);
                            header.call_id
                        }
                        // A completion for an internal call whose handler already
                        // returned without waiting for it: nobody wants it.
                        Kind::Complete => continue,
                        Kind::Unknown(raw) => {
                            return RuntimeError::Protocol(format!("unknown message kind {raw}"))
                        }
                    }
                }
            };
            if let Err(e) = self.run_one(call_id, handler) {
                return e;
            }
        }
    }

    fn run_one(&mut self, call_id: u64, handler: &mut BoxedHandler) -> Result<(), RuntimeError> {
        let t0 = protocol::monotonic_ns();
        let input = std::mem::take(&mut self.input);
        let query = std::mem::take(&mut self.query);
        let (result, status, content_type, invalid) = {
            let mut ctx = Ctx {
                rt: self,
                call_id,
                query: &query,
                status: protocol::STATUS_OK,
                content_type: None,
                invalid: None,
            };
            let result = panic::catch_unwind(AssertUnwindSafe(|| handler(&mut ctx, &input)));
            (result, ctx.status, ctx.content_type, ctx.invalid)
        };
        self.input = input;
        self.query = query;
        // A handler that started internal calls and returned without waiting
        // still announces that it polls: not any more.
        self.receiver.end_polling();
        // Internal calls the handler never waited for are abandoned; their late
        // completions are dropped by `run`.
        self.in_flight.clear();
        self.parked.clear();
        let t1 = protocol::monotonic_ns();
        self.last_completion_ns = t1;
        let mut header = Header {
            kind: Kind::Complete,
            call_id,
            t0_ns: t0,
            t1_ns: t1,
            ..Header::default()
        };
        match (result, invalid) {
            // A status or content type the engine could not send: the
            // handler's bug, answered as one rather than sent half-broken.
            (Ok(Ok(_)), Some(invalid)) => {
                header.status = protocol::STATUS_HANDLER_ERROR;
                self.send_completion(&mut header, invalid.to_string().as_bytes())
            }
            (Ok(Ok(output)), None) => {
                header.status = status;
                match content_type {
                    Some(ct) => {
                        header.flags |= protocol::FLAG_CONTENT_TYPE;
                        protocol::encode_content_type_prefix(&mut self.scratch, &ct);
                        self.scratch.extend_from_slice(&output);
                        let payload = std::mem::take(&mut self.scratch);
                        let r = self.send_completion(&mut header, &payload);
                        self.scratch = payload;
                        r
                    }
                    None => self.send_completion(&mut header, &output),
                }
            }
            (Ok(Err(e)), _) => {
                header.status = e.status();
                self.send_completion(&mut header, e.message().as_bytes())
            }
            (Err(panic), _) => {
                let message = panic_message(&*panic);
                header.status = protocol::STATUS_HANDLER_ERROR;
                let text = format!("handler panicked: {message}");
                self.send_completion(&mut header, text.as_bytes())
            }
        }
    }

    /// Sends a completion; an output too large for the channel becomes a 500
    /// that says so, rather than a lost reply.
    fn send_completion(&mut self, header: &mut Header, payload: &[u8]) -> Result<(), RuntimeError> {
        match self.send_blocking(header, payload) {
            Err(SendError::TooLarge { len, max }) => {
                header.status = protocol::STATUS_HANDLER_ERROR;
                header.flags &= !protocol::FLAG_CONTENT_TYPE;
                let text =
                    format!("output of {len} bytes exceeds the channel's limit of {max} bytes");
                self.send_blocking(header, text.as_bytes())
                    .map_err(|e| RuntimeError::Send(e.to_string()))
            }
            other => other.map_err(|e| RuntimeError::Send(e.to_string())),
        }
    }

    /// Sends, waiting while the ring or arena is full (the engine drains them);
    /// only `TooLarge` is returned.
    fn send_blocking(&mut self, header: &Header, payload: &[u8]) -> Result<(), SendError> {
        let mut backoff = 0u32;
        loop {
            match self.sender.try_send(header, payload) {
                Ok(()) => return Ok(()),
                Err(SendError::RingFull) | Err(SendError::ArenaFull) => {
                    backoff += 1;
                    if backoff < 64 {
                        std::hint::spin_loop();
                    } else if backoff < 1024 {
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(crate) fn start_internal_call(
        &mut self,
        parent_call_id: u64,
        function: &str,
        input: &[u8],
    ) -> Result<u64, InvokeError> {
        let &function_id = self
            .functions
            .get(function)
            .ok_or_else(|| InvokeError::UnknownFunction(function.to_string()))?;
        let local_id = self.next_local_id;
        self.next_local_id += 1;
        let header = Header {
            kind: Kind::Invoke,
            function_id,
            call_id: local_id,
            parent_call_id,
            t0_ns: protocol::monotonic_ns(),
            ..Header::default()
        };
        // On a shared core, the callee's wake-up is then ours to do, from
        // this core (nocturne_ipc::wake_board): announced before the send,
        // so the engine sees it when it hands the call over.
        self.receiver.begin_polling();
        self.send_blocking(&header, input).map_err(|e| match e {
            SendError::TooLarge { len, max } => InvokeError::TooLarge { len, max },
            other => InvokeError::Channel(other.to_string()),
        })?;
        self.in_flight.insert(local_id, function.to_string());
        Ok(local_id)
    }

    pub(crate) fn wait_internal_call(&mut self, local_id: u64) -> Result<Vec<u8>, InvokeError> {
        if !self.in_flight.contains_key(&local_id) && !self.parked.contains_key(&local_id) {
            return Err(InvokeError::UnknownHandle(local_id));
        }
        // The answer is on its way: poll for it.
        self.receiver.park_beside_a_poller(false);
        loop {
            if let Some(result) = self.parked.remove(&local_id) {
                return result;
            }
            self.receiver.wait(&self.wait, None);
            match self.receiver.try_recv() {
                Ok(None) => {}
                Err(e) => return Err(channel_error(e)),
                Ok(Some(msg)) => {
                    let header = *msg.header();
                    match header.kind {
                        Kind::Complete => {
                            let Some(function) = self.in_flight.remove(&header.call_id) else {
                                continue; // late completion of an abandoned call
                            };
                            let result = if header.status < 400 {
                                Ok(protocol::split_content_type(&header, msg.payload())
                                    .map(|(_, body)| body.to_vec())
                                    .map_err(|e| InvokeError::Channel(e.to_string()))?)
                            } else {
                                let text = String::from_utf8_lossy(msg.payload()).into_owned();
                                Err(InvokeError::from_status(&function, header.status, text))
                            };
                            self.parked.insert(header.call_id, result);
                        }
                        // The engine gives a worker one call at a time; an Invoke
                        // while one runs breaks that contract.
                        Kind::Invoke => {
                            return Err(InvokeError::Channel(
                                "engine sent a second call to a busy worker".into(),
                            ))
                        }
                        Kind::Unknown(raw) => {
                            return Err(InvokeError::Channel(format!("unknown message kind {raw}")))
                        }
                    }
                }
            }
        }
    }
}

fn channel_error(e: RecvError) -> InvokeError {
    InvokeError::Channel(e.to_string())
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::Error;
    use nocturne_ipc::channel::{ChannelConfig, EngineEnd, WorkerEnd};

    /// What the engine reads back for one call.
    #[derive(Debug, PartialEq, Eq)]
    struct Completion {
        status: u16,
        content_type: Option<String>,
        body: String,
    }

    /// Runs the worker loop over a real memfd channel: sends one `Invoke` per
    /// query string, then a message of an unknown kind that stops the loop,
    /// and returns the completions the engine side reads.
    fn serve_calls(mut handler: BoxedHandler, queries: &[&str]) -> Vec<Completion> {
        let engine = EngineEnd::create(&ChannelConfig::default(), "nocturne-runtime-test")
            .expect("a memfd channel");
        let worker =
            WorkerEnd::attach(engine.region_fd().try_clone_to_owned().unwrap()).expect("attach");
        let (mut to_worker, mut from_worker) = engine.split();
        let (sender, receiver) = worker.split();
        let mut runtime = Runtime::new("f".into(), sender, receiver, WaitPolicy::Spin, []);

        let mut payload = Vec::new();
        for (call_id, query) in (1..).zip(queries) {
            protocol::encode_query_prefix(&mut payload, query);
            let header = Header {
                kind: Kind::Invoke,
                flags: protocol::FLAG_QUERY,
                call_id,
                ..Header::default()
            };
            to_worker.try_send(&header, &payload).expect("room");
        }
        let stop = Header {
            kind: Kind::Unknown(0x7777),
            ..Header::default()
        };
        to_worker.try_send(&stop, &[]).expect("room");
        let stopped = runtime.run(&mut handler);
        assert!(
            matches!(&stopped, RuntimeError::Protocol(m) if m.contains("unknown message kind")),
            "{stopped}"
        );

        let mut completions = Vec::new();
        while let Some(msg) = from_worker.try_recv().expect("valid completion") {
            let header = *msg.header();
            assert_eq!(header.kind, Kind::Complete);
            assert_eq!(header.call_id, completions.len() as u64 + 1);
            let (content_type, body) =
                protocol::split_content_type(&header, msg.payload()).expect("valid prefix");
            completions.push(Completion {
                status: header.status,
                content_type: content_type.map(str::to_string),
                body: String::from_utf8_lossy(body).into_owned(),
            });
        }
        assert_eq!(completions.len(), queries.len());
        completions
    }

    /// `?s=N` sets status N, `?ct=X` sets content type X (with `%0D`, `%0A`
    /// and `%00` decoded), in the order given; the output is `ok`.
    fn setter() -> BoxedHandler {
        Box::new(
            |ctx: &mut Ctx<'_>, _input: &[u8]| -> Result<Vec<u8>, Error> {
                let query = ctx.query().unwrap_or("").to_string();
                for (key, value) in query.split('&').filter_map(|kv| kv.split_once('=')) {
                    match key {
                        "s" => ctx.set_status(value.parse().expect("a u16")),
                        "ct" => ctx.set_content_type(
                            &value
                                .replace("%0D", "\r")
                                .replace("%0A", "\n")
                                .replace("%00", "\0"),
                        ),
                        "err" => return Err(Error::with_status(400, value)),
                        _ => {}
                    }
                }
                Ok(b"ok".to_vec())
            },
        )
    }

    fn ok(status: u16, content_type: Option<&str>) -> Completion {
        Completion {
            status,
            content_type: content_type.map(str::to_string),
            body: "ok".into(),
        }
    }

    fn failed(body: &str) -> Completion {
        Completion {
            status: protocol::STATUS_HANDLER_ERROR,
            content_type: None,
            body: body.into(),
        }
    }

    #[test]
    fn a_status_outside_200_to_599_answers_500_naming_it() {
        let got = serve_calls(
            setter(),
            &[
                "s=201",
                "s=204",
                "s=404",
                "s=599",
                "s=0",
                "s=99",
                "s=100",
                "s=101",
                "s=199",
                "s=600",
                "s=65535",
                // The first invalid value is the bug, whatever follows it.
                "s=101&s=200",
                // A valid one set before it does not hide it either.
                "s=201&s=700",
            ],
        );
        let invalid = |s: u16| {
            failed(&format!(
                "handler set an invalid status {s} (a function's status must be 200..=599)"
            ))
        };
        assert_eq!(
            got,
            [
                ok(201, None),
                ok(204, None),
                ok(404, None),
                ok(599, None),
                invalid(0),
                invalid(99),
                invalid(100),
                invalid(101),
                invalid(199),
                invalid(600),
                invalid(65535),
                invalid(101),
                invalid(700),
            ]
        );
    }

    #[test]
    fn a_content_type_that_is_not_a_header_value_answers_500_naming_it() {
        let longest = "a".repeat(protocol::MAX_CONTENT_TYPE);
        let too_long = format!("ct={longest}b");
        let longest_query = format!("ct={longest}");
        let got = serve_calls(
            setter(),
            &[
                "ct=application/json; charset=utf-8",
                &longest_query,
                "ct=text/plain%0D%0AX-Evil: injected",
                "ct=text/plain%0AX-Evil: injected",
                "ct=text/%00plain",
                "ct=",
                " ct= text/plain",
                "ct= text/plain",
                &too_long,
                "s=201&ct=text/html%0D%0A",
            ],
        );
        let control = |quoted: &str, c: &str| {
            failed(&format!(
                "handler set an invalid content type {quoted}: it contains the control \
                 character {c} (only visible ASCII, spaces and tabs are allowed)"
            ))
        };
        assert_eq!(got[0], ok(200, Some("application/json; charset=utf-8")));
        assert_eq!(got[1], ok(200, Some(longest.as_str())));
        assert_eq!(
            got[2],
            control(r#""text/plain\r\nX-Evil: injected""#, r"'\r'")
        );
        assert_eq!(
            got[3],
            control(r#""text/plain\nX-Evil: injected""#, r"'\n'")
        );
        assert_eq!(got[4], control(r#""text/\0plain""#, r"'\0'"));
        assert_eq!(
            got[5],
            failed("handler set an invalid content type \"\": it is empty")
        );
        // (" ct" is not the key "ct": nothing set, the default answer.)
        assert_eq!(got[6], ok(200, None));
        assert_eq!(
            got[7],
            failed(
                "handler set an invalid content type \" text/plain\": it starts or ends with \
                 a space or tab"
            )
        );
        assert_eq!(got[8].status, 500, "{:?}", got[8]);
        assert!(
            got[8].body.ends_with("it is 256 bytes long (at most 255)"),
            "{:?}",
            got[8]
        );
        assert_eq!(got[9], control(r#""text/html\r\n""#, r"'\r'"));
    }

    #[test]
    fn an_error_returned_after_an_invalid_value_is_answered_as_returned() {
        let got = serve_calls(setter(), &["s=101&err=bad input"]);
        assert_eq!(
            got,
            [Completion {
                status: 400,
                content_type: None,
                body: "bad input".into(),
            }]
        );
    }

    /// The worker's side of the gap rule (`PARK_BESIDE_A_POLLER_AFTER`),
    /// over a real memfd channel and board: with another consumer polling
    /// on the board, a worker whose call came far after its last
    /// completion parks at once; one whose call came right after it polls.
    #[test]
    fn a_worker_parks_beside_a_poller_only_when_its_calls_come_far_apart() {
        use nocturne_ipc::wake_board::{SharedWakeBoard, Slot, WakeSeat};
        use std::sync::Arc;
        use std::time::Instant;

        let board = Arc::new(SharedWakeBoard::create("runtime-gap-test").unwrap());
        let worker_slot = Slot::new(0).unwrap();
        let poller = Slot::new(1).unwrap();
        let engine = EngineEnd::create(&ChannelConfig::default(), "runtime-gap-test").unwrap();
        let mut worker =
            WorkerEnd::attach(engine.region_fd().try_clone_to_owned().unwrap()).unwrap();
        worker.take_seat(WakeSeat::new(board.clone(), worker_slot));
        let (mut to_worker, mut from_worker) = engine.split();
        to_worker.take_seat(WakeSeat::new(board.clone(), worker_slot));
        let running = std::thread::spawn(move || {
            let (sender, receiver) = worker.split();
            let wait = WaitPolicy::Yield {
                spin: Duration::from_secs(5),
            };
            let mut runtime = Runtime::new("f".into(), sender, receiver, wait, []);
            let mut handler: BoxedHandler =
                Box::new(|_: &mut Ctx<'_>, input: &[u8]| Ok(input.to_vec()));
            runtime.run(&mut handler)
        });
        // Another worker of the core polls (and, stopped, never serves).
        board.board().enter_poll(poller);
        let call = |to: &mut Sender, id: u64, t0_ns: u64| {
            let header = Header {
                kind: Kind::Invoke,
                call_id: id,
                t0_ns,
                ..Header::default()
            };
            to.try_send(&header, b"x").unwrap();
            // A wake delegated to the stopped poller: the engine's watch
            // would do it after its grace; here, at once.
            if to.take_new_delegation() {
                to.wake_if_unreleased();
            }
        };
        let completion = |from: &mut Receiver| -> u64 {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(m) = from.try_recv().unwrap() {
                    assert_eq!(m.header().kind, Kind::Complete);
                    return m.header().t1_ns;
                }
                assert!(Instant::now() < deadline, "no completion");
                std::thread::yield_now();
            }
        };
        // Polls: the worker's bit on the board, seen from the poller.
        let worker_polls = || board.board().others_polling(poller);
        // Stays off polling for a while (it parked at once)?
        let never_polls_for = |d: Duration| {
            let until = Instant::now() + d;
            while Instant::now() < until {
                if worker_polls() {
                    return false;
                }
                std::thread::yield_now();
            }
            true
        };

        // Call 1: its first, far after any completion: it parks at once.
        call(&mut to_worker, 1, protocol::monotonic_ns());
        let t1 = completion(&mut from_worker);
        assert!(
            never_polls_for(Duration::from_millis(200)),
            "a worker whose calls come far apart polled beside the poller"
        );
        // Call 2, dispatched 1 µs after its completion: afterwards it polls
        // (for its 5 s budget) beside the poller.
        call(&mut to_worker, 2, t1 + 1_000);
        completion(&mut from_worker);
        let until = Instant::now() + Duration::from_secs(5);
        while !worker_polls() {
            assert!(
                Instant::now() < until,
                "a worker whose calls come close together never polled"
            );
            std::thread::yield_now();
        }

        // Stop it: a message of an unknown kind ends the loop.
        let stop = Header {
            kind: Kind::Unknown(0x7777),
            ..Header::default()
        };
        to_worker.try_send(&stop, &[]).unwrap();
        if to_worker.take_new_delegation() {
            to_worker.wake_if_unreleased();
        }
        let stopped = running.join().unwrap();
        assert!(matches!(stopped, RuntimeError::Protocol(_)), "{stopped}");
    }
}
