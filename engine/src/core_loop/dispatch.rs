//! Dispatch: admitting calls, handing them to workers, answering them.
//!
//! Per function, idle workers are a LIFO and waiting calls a FIFO. A call goes
//! straight to an idle worker when the function is under its Little's-law
//! limit; otherwise it waits, and a full queue is answered 503 at once. When a
//! worker completes, its result goes to the call's origin — an HTTP response, or
//! a `Complete` on the calling worker's request ring — and the worker takes the
//! next waiting call.

use std::time::{Duration, Instant};

use nocturne_ipc::channel::SendError;
use nocturne_ipc::message::{Header, Kind};
use nocturne_net::http::{HttpServer, RespondError, Response};
use nocturne_net::Transport;

use nocturne_functions::protocol::{
    self, STATUS_CALL_DEPTH, STATUS_DEADLINE, STATUS_OVERLOADED, STATUS_TOO_LARGE,
    STATUS_UNKNOWN_FUNCTION, STATUS_WORKER_CRASHED,
};

use super::calls::{call_id, call_key};
use super::{Call, LoopState, Origin};
use crate::slab::Key;

/// How long past a forwarded call's deadline its loop waits for the
/// cut-off from the loop running it before answering 504 itself. The other
/// loop's timers run every millisecond: 100 ms is for a loop that is gone.
const FORWARDED_DEADLINE_GRACE: Duration = Duration::from_millis(100);

/// The least a waiting call waits for a busy worker before an idle one
/// takes it past the concurrency limit (see `take_idle_worker_for_pending`).
const OVERDUE_AFTER: Duration = Duration::from_millis(1);

/// How a call was admitted.
pub(crate) enum Admission {
    /// Running in a worker.
    Dispatched,
    /// Waiting for a worker.
    Queued,
    /// Handed to another loop, which has workers of the function.
    Forwarded,
    /// Refused: answer the origin with this status and message.
    Rejected((u16, String)),
}

/// A call being admitted (its payload travels beside it).
#[derive(Clone, Copy)]
pub(crate) struct NewCall {
    pub function: u32,
    pub origin: Origin,
    /// The call whose handler made it (internal calls).
    pub parent: Option<Key>,
    pub depth: u32,
    /// The most time it may take (its function's timeout caps it further).
    pub deadline: Duration,
    /// Header flags of the payload (`FLAG_QUERY`).
    pub flags: u16,
}

impl NewCall {
    /// The record of this call in the loop's call table, received at
    /// `received_ns` and due at `deadline`, not yet dispatched nor queued;
    /// `forwarded_to` is the loop it is handed to, if any.
    pub(crate) fn to_call(
        self,
        received_ns: u64,
        deadline: Instant,
        forwarded_to: Option<u8>,
    ) -> Call {
        Call {
            origin: self.origin,
            function: self.function,
            depth: self.depth,
            parent: self.parent,
            worker: None,
            received_ns,
            dispatched_ns: 0,
            deadline,
            queued_input: None,
            forwarded_to,
            handed_back: false,
        }
    }
}

/// A result to deliver to a call's origin.
pub(crate) struct Outcome<'a> {
    pub status: u16,
    /// Header flags of `payload` (only `FLAG_CONTENT_TYPE` is meaningful).
    pub flags: u16,
    pub payload: &'a [u8],
    /// Handler execution time, ns (0 when the call never ran).
    pub exec_ns: u64,
}

impl LoopState {
    /// Admits a new call of function `f` (already validated) with `payload`
    /// (`flags` says whether it carries a query prefix).
    pub(crate) fn admit(&mut self, new: NewCall, payload: &[u8]) -> Admission {
        if self.functions[new.function as usize].max_share == 0 {
            return self.forward(new, payload);
        }
        let NewCall {
            function: f,
            origin,
            parent,
            deadline,
            flags,
            ..
        } = new;
        // Copied out rather than holding a clone of the context: its `Arc`
        // count is one cache line shared by every loop.
        let cfg = &self.ctx.config.functions[f as usize];
        let timeout = cfg.timeout.min(deadline);
        let max_queue = cfg.max_queue;
        // HTTP bodies were held to max_payload before they were read; an
        // internal call's input is held to it here, also one another loop
        // forwarded (its origin is then `Remote`, whatever it was there).
        if !matches!(origin, Origin::External(_)) && payload.len() > cfg.max_payload {
            return Admission::Rejected((
                STATUS_TOO_LARGE,
                format!(
                    "input of {} bytes is more than {}'s max_payload ({} bytes)",
                    payload.len(),
                    cfg.name,
                    cfg.max_payload
                ),
            ));
        }
        self.functions[f as usize].limiter.on_arrival(self.now_ns);
        let call = new.to_call(self.now_ns, self.now + timeout, None);
        let admission = if let Some(w) = self.take_idle_worker(f) {
            let key = self.calls.insert(call);
            match self.send_invoke(w, key, flags, payload) {
                Ok(()) => Admission::Dispatched,
                Err(e) => {
                    self.calls.remove(key);
                    self.refuse_worker(w, e);
                    Admission::Rejected(match e {
                        SendError::Protocol(_) => (
                            STATUS_WORKER_CRASHED,
                            format!("worker of {} broke the protocol (protocol violation: {e}); it is being replaced", self.functions[f as usize].name),
                        ),
                        SendError::TooLarge { .. } => (
                            STATUS_TOO_LARGE,
                            format!("cannot hand the call to a worker of {}: {e}", self.functions[f as usize].name),
                        ),
                        _ => (
                            STATUS_OVERLOADED,
                            format!("cannot hand the call to a worker of {}: {e}", self.functions[f as usize].name),
                        ),
                    })
                }
            }
        } else if parent.is_some_and(|p| self.would_deadlock(f, p)) && self.another_loop_owns(f) {
            // Every worker here runs a caller of this call; another loop's
            // may be idle (it runs the call only then, else refuses it 508:
            // it cannot see the call's callers).
            self.forward_to_owner(new, payload, true)
        } else if parent.is_some_and(|p| self.would_deadlock(f, p)) {
            Admission::Rejected((
                STATUS_CALL_DEPTH,
                format!(
                    "call cycle: every worker of {} is busy in a caller of this call, \
                     so it could never run (raise max_workers or break the cycle)",
                    self.functions[f as usize].name
                ),
            ))
        } else if let Some(restart_at) = self.restart_after(f, self.now + timeout) {
            Admission::Rejected((STATUS_OVERLOADED, self.no_worker_before(f, restart_at)))
        } else if self.functions[f as usize].pending.len() < max_queue {
            let mut call = call;
            call.queued_input = Some((flags, payload.to_vec()));
            let key = self.calls.insert(call);
            self.functions[f as usize].pending.push_back(key);
            Admission::Queued
        } else {
            Admission::Rejected((
                STATUS_OVERLOADED,
                format!(
                    "function {} is overloaded: {} calls already queued",
                    self.functions[f as usize].name, max_queue
                ),
            ))
        };
        self.scale_up(f);
        self.publish(f);
        admission
    }

    /// When `f`, which has no worker and none starting, starts its next one
    /// (after a crash back-off); `None` while it has or starts a worker.
    fn next_start_without_workers(&self, f: u32) -> Option<Instant> {
        let fs = &self.functions[f as usize];
        if fs.workers + fs.starting > 0 {
            return None;
        }
        fs.restart_at
    }

    /// [`next_start_without_workers`](Self::next_start_without_workers), if
    /// that is after `deadline`.
    fn restart_after(&self, f: u32, deadline: Instant) -> Option<Instant> {
        self.next_start_without_workers(f).filter(|&t| t > deadline)
    }

    /// Whether a call of `f` made from call `parent` can never run: `f` cannot
    /// grow, and each of its workers runs an ancestor of the new call, waiting
    /// (directly or not) for it.
    fn would_deadlock(&self, f: u32, parent: Key) -> bool {
        let fs = &self.functions[f as usize];
        // A worker on its way, or room for one, or one idle: the call can run.
        // And with no worker at all, nobody can be an ancestor.
        if fs.workers + fs.starting < fs.max_share
            || fs.starting > 0
            || fs.workers == 0
            || !fs.idle.is_empty()
        {
            return false;
        }
        let mut ancestors = Vec::with_capacity(8);
        let mut next = Some(parent);
        while let Some(k) = next {
            ancestors.push(k);
            next = self.calls.get(k).and_then(|c| c.parent);
            if ancestors.len() > 4096 {
                break; // depth is capped far below this; stay bounded anyway
            }
        }
        self.workers
            .iter()
            .filter(|(_, s)| s.function == f)
            .all(|(_, s)| s.busy.is_some_and(|b| ancestors.contains(&b)))
    }

    /// An idle worker of `f` (the most recently idle: its caches are warm)
    /// for a new call, if `f` is under its concurrency limit. Calls whose
    /// handler waits for internal calls do not count: they hold a worker but
    /// no CPU, and counting them would let a caller starve its own callees
    /// (A → B → A would wait for a limit that never moves).
    fn take_idle_worker(&mut self, f: u32) -> Option<Key> {
        let fs = &mut self.functions[f as usize];
        if fs.in_flight.saturating_sub(fs.waiting) >= fs.limiter.limit() {
            return None;
        }
        fs.idle.pop()
    }

    /// [`take_idle_worker`](Self::take_idle_worker) for the oldest waiting
    /// call, which may pass the limit once it has waited [`OVERDUE_AFTER`].
    /// Short calls keep the limit's benefit (on few cores, fewer active
    /// workers serve more: 2× the internal-call throughput of using every
    /// idle worker at once, `bench engine`): a busy worker frees well within
    /// that. Long ones do not queue behind an averaged limit that lags a
    /// burst (after a quiet spell eight 300 ms calls ran one at a time beside
    /// three idle workers, and a longer burst missed its deadlines). Waiting
    /// an average service time instead, as this once did, still failed calls
    /// of 1.2 s with a 2 s timeout beside two idle workers: for calls that
    /// long an idle worker's wake-up (µs) costs nothing.
    fn take_idle_worker_for_pending(&mut self, f: u32) -> Option<Key> {
        if let Some(w) = self.take_idle_worker(f) {
            return Some(w);
        }
        let fs = &self.functions[f as usize];
        let waited = fs
            .pending
            .front()
            .and_then(|&key| self.calls.get(key))
            .map_or(0, |call| self.now_ns.saturating_sub(call.received_ns));
        if u128::from(waited) < OVERDUE_AFTER.as_nanos() {
            return None;
        }
        self.functions[f as usize].idle.pop()
    }

    /// Changes worker `w`'s count of internal calls in flight by `delta`,
    /// keeping its function's count of waiting workers in step.
    pub(crate) fn adjust_outstanding(&mut self, w: Key, delta: i32) {
        let Some(slot) = self.workers.get_mut(w) else {
            return;
        };
        let before = slot.outstanding;
        slot.outstanding = before.saturating_add_signed(delta);
        let f = slot.function as usize;
        match (before, slot.outstanding) {
            (0, n) if n > 0 => self.functions[f].waiting += 1,
            (b, 0) if b > 0 => self.functions[f].waiting -= 1,
            _ => {}
        }
    }

    /// Puts worker `w` back on its function's idle list.
    pub(crate) fn make_idle(&mut self, w: Key) {
        // Internal calls its handler abandoned no longer make it wait.
        let outstanding = self.workers.get(w).map_or(0, |s| s.outstanding);
        self.adjust_outstanding(w, -(outstanding as i32));
        if let Some(slot) = self.workers.get_mut(w) {
            slot.busy = None;
            slot.abandoned_at = None;
            slot.idle_since = self.now;
            let f = slot.function;
            self.functions[f as usize].idle.push(w);
        }
    }

    /// Writes the `Invoke` of call `key` into worker `w`'s request ring.
    fn send_invoke(
        &mut self,
        w: Key,
        key: Key,
        flags: u16,
        payload: &[u8],
    ) -> Result<(), SendError> {
        let loop_index = self.index;
        let call = self
            .calls
            .get_mut(key)
            .expect("call was just inserted or dequeued");
        let remaining = call.deadline.saturating_duration_since(self.now);
        let header = Header {
            kind: Kind::Invoke,
            flags,
            function_id: call.function,
            call_id: call_id(loop_index, key),
            t0_ns: self.now_ns,
            deadline_us: u32::try_from(remaining.as_micros()).unwrap_or(u32::MAX),
            ..Header::default()
        };
        let slot = self.workers.get_mut(w).expect("idle worker exists");
        slot.try_send(&header, payload, self.now, &mut self.wake_watch)?;
        slot.busy = Some(key);
        call.worker = Some(w);
        call.dispatched_ns = self.now_ns;
        self.functions[call.function as usize].in_flight += 1;
        Ok(())
    }

    /// Hands waiting calls of `f` to idle workers while it is under its limit.
    pub(crate) fn dispatch_pending<T: Transport>(&mut self, f: u32, server: &mut HttpServer<T>) {
        while !self.functions[f as usize].pending.is_empty() {
            let Some(w) = self.take_idle_worker_for_pending(f) else {
                break;
            };
            let key = self.functions[f as usize]
                .pending
                .pop_front()
                .expect("not empty");
            let Some((flags, input)) = self.calls.get_mut(key).and_then(|c| c.queued_input.take())
            else {
                // Answered already (its deadline passed): the worker stays idle.
                self.functions[f as usize].idle.push(w);
                continue;
            };
            match self.send_invoke(w, key, flags, &input) {
                Ok(()) => {}
                Err(e @ SendError::Protocol(_)) => {
                    self.refuse_worker(w, e);
                    let name = &self.functions[f as usize].name;
                    let msg = format!(
                        "worker of {name} broke the protocol (protocol violation: {e}); it is being replaced"
                    );
                    self.fail_call(key, STATUS_WORKER_CRASHED, &msg, server);
                }
                Err(e) => {
                    // Its ring is still full of earlier messages: the call
                    // keeps its place and waits for a later turn.
                    self.refuse_worker(w, e);
                    if let Some(call) = self.calls.get_mut(key) {
                        call.queued_input = Some((flags, input));
                    }
                    self.functions[f as usize].pending.push_front(key);
                    break;
                }
            }
        }
        self.publish(f);
    }

    /// Puts call `key`, which its worker died without taking, back at the
    /// front of its function's queue with its input; its deadline runs on,
    /// and the time it spent with the dead worker counts as queueing.
    pub(crate) fn requeue(&mut self, key: Key, flags: u16, input: Vec<u8>) {
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        let f = call.function as usize;
        if call.worker.take().is_some() {
            self.functions[f].in_flight -= 1;
        }
        call.dispatched_ns = 0;
        call.handed_back = true;
        call.queued_input = Some((flags, input));
        self.functions[f].pending.push_front(key);
        self.publish(f as u32);
    }

    /// Answers 503 now the waiting calls of `f` whose deadline comes before
    /// its next, backed-off start: with no worker and none starting, nothing
    /// can run them in time, and a client should not hold on for nothing.
    pub(crate) fn fail_calls_due_before_restart<T: Transport>(
        &mut self,
        f: u32,
        server: &mut HttpServer<T>,
    ) {
        let Some(restart_at) = self.next_start_without_workers(f) else {
            return;
        };
        let fs = &self.functions[f as usize];
        if fs.pending.is_empty() {
            return;
        }
        let calls = &self.calls;
        let mut doomed = std::mem::take(&mut self.keys);
        doomed.clear();
        doomed.extend(
            fs.pending
                .iter()
                .copied()
                .filter(|&k| calls.get(k).is_some_and(|c| c.deadline < restart_at)),
        );
        if !doomed.is_empty() {
            let msg = self.no_worker_before(f, restart_at);
            self.functions[f as usize]
                .pending
                .retain(|k| !doomed.contains(k));
            for &key in &doomed {
                self.fail_call(key, STATUS_OVERLOADED, &msg, server);
            }
        }
        self.keys = doomed;
    }

    /// The `Retry-After` of a 503 for `f`, in whole seconds: until its next
    /// start while it has no worker and is backed off, else 1.
    pub(crate) fn retry_after_s(&self, f: u32) -> u64 {
        match self.next_start_without_workers(f) {
            Some(t) => {
                let ms = t.saturating_duration_since(self.now).as_millis();
                u64::try_from(ms.div_ceil(1000)).unwrap_or(u64::MAX).max(1)
            }
            None => 1,
        }
    }

    /// Why a call of `f` cannot run before `restart_at`.
    fn no_worker_before(&self, f: u32, restart_at: Instant) -> String {
        format!(
            "function {} has no worker: its workers keep failing, and the next one \
             starts in {} ms, after this call's deadline",
            self.functions[f as usize].name,
            restart_at.saturating_duration_since(self.now).as_millis()
        )
    }

    /// A worker that could not take a call: back to idle when its ring was
    /// only full; marked broken (the loop kills and replaces it on its next
    /// look) when it corrupted its side of the ring.
    fn refuse_worker(&mut self, w: Key, e: SendError) {
        match e {
            SendError::Protocol(p) => {
                if let Some(slot) = self.workers.get_mut(w) {
                    slot.broken =
                        Some(format!("corrupt release position in its request ring: {p}"));
                }
            }
            _ => self.make_idle(w),
        }
    }

    /// Answers call `key` with an error and forgets it.
    pub(crate) fn fail_call<T: Transport>(
        &mut self,
        key: Key,
        status: u16,
        message: &str,
        server: &mut HttpServer<T>,
    ) {
        let Some(call) = self.calls.remove(key) else {
            return;
        };
        // A call cut off in a worker (its deadline, a drain) ran until now:
        // `Server-Timing` counts that as execution, not as the runtime's.
        let exec_ns = match call.worker {
            Some(_) if call.dispatched_ns > 0 => self.now_ns.saturating_sub(call.dispatched_ns),
            _ => 0,
        };
        if call.worker.is_some() {
            self.functions[call.function as usize].in_flight -= 1;
        }
        let outcome = Outcome {
            status,
            flags: 0,
            payload: message.as_bytes(),
            exec_ns,
        };
        self.deliver(&call, &outcome, server);
        self.publish(call.function);
    }

    /// Sends `outcome` to whoever waits for `call`.
    pub(crate) fn deliver<T: Transport>(
        &mut self,
        call: &Call,
        outcome: &Outcome<'_>,
        server: &mut HttpServer<T>,
    ) {
        match call.origin {
            Origin::External(request) => {
                // The payload is a view into the worker's ring slot, which
                // the worker can still write: the content type is copied out
                // first, so the HTTP layer checks (for CR/LF and other
                // controls) the very bytes it then writes into the header.
                let (copied, body) = match protocol::split_content_type_copied(
                    &header_with(outcome.flags),
                    outcome.payload,
                ) {
                    Ok(parts) => parts,
                    Err(_) => (None, outcome.payload),
                };
                let content_type = Some(response_content_type(copied.as_ref(), outcome.status));
                self.timing.clear();
                server_timing(
                    &mut self.timing,
                    (call.received_ns, call.dispatched_ns),
                    outcome.exec_ns,
                    self.now_ns,
                );
                // Overload (a full queue, here or in the loop a call was
                // forwarded to; a function that cannot start a worker in
                // time) tells the client when to come back.
                let seconds = if outcome.status == STATUS_OVERLOADED {
                    self.retry_after_s(call.function).to_string()
                } else {
                    String::new()
                };
                let headers = [
                    ("Server-Timing", self.timing.as_str()),
                    ("Retry-After", seconds.as_str()),
                ];
                let headers = if outcome.status == STATUS_OVERLOADED {
                    &headers[..]
                } else {
                    &headers[..1]
                };
                let response = Response {
                    status: outcome.status,
                    content_type,
                    headers,
                    body,
                };
                match server.respond(request, &response) {
                    // The client may have gone; its answer then has nowhere to go.
                    Ok(()) | Err(RespondError::ConnectionGone | RespondError::UnknownRequest) => {}
                    // A worker that does not use the SDK, or an SDK bug, can
                    // send what HTTP cannot carry (a 1xx status, a control
                    // character in the content type). The client still gets
                    // an answer: unanswered, its connection would wait forever.
                    Err(e @ (RespondError::InvalidStatus(_) | RespondError::InvalidHeader)) => {
                        let name = &self.functions[call.function as usize].name;
                        let why = format!("function {name} gave an answer HTTP cannot carry: {e}");
                        log::warn!("nocturne: {why} (status {})", outcome.status);
                        let refused = Response {
                            status: 500,
                            content_type: Some("text/plain; charset=utf-8"),
                            headers: &headers[..1],
                            body: why.as_bytes(),
                        };
                        let _ = server.respond(request, &refused);
                    }
                }
            }
            Origin::Internal { worker, local_id } => {
                let header = Header {
                    kind: Kind::Complete,
                    flags: outcome.flags,
                    call_id: local_id,
                    status: outcome.status,
                    ..Header::default()
                };
                // A caller that died meanwhile is simply gone.
                if self.workers.get(worker).is_some() {
                    self.adjust_outstanding(worker, -1);
                    let slot = self.workers.get_mut(worker).expect("checked");
                    slot.send_or_queue(&header, outcome.payload, self.now, &mut self.wake_watch);
                }
            }
            Origin::Remote { from, token } => self.answer_forwarded(from, token, call, outcome),
        }
    }

    /// Handles an internal `Invoke` from worker `w`; `payload` is the
    /// message's, still in `w`'s response ring.
    pub(crate) fn internal_invoke<T: Transport>(
        &mut self,
        w: Key,
        header: &Header,
        payload: &[u8],
        server: &mut HttpServer<T>,
    ) -> Result<(), String> {
        let parent = self.workers.get(w).and_then(|s| s.busy);
        let parent_ok = parent.is_some_and(|p| call_id(self.index, p) == header.parent_call_id);
        if !parent_ok {
            return Err(format!(
                "internal call names parent {:#x}, but the worker is not running it",
                header.parent_call_id
            ));
        }
        let parent = parent.expect("checked");
        let (depth, remaining) = match self.calls.get(parent) {
            Some(p) => (p.depth + 1, p.deadline.saturating_duration_since(self.now)),
            // The parent timed out already; its worker still runs. Give the
            // child no time at all: it fails at the next timer.
            None => (1, Duration::ZERO),
        };
        let reply_err = |st: &mut Self, status: u16, msg: String| {
            let header = Header {
                kind: Kind::Complete,
                call_id: header.call_id,
                status,
                ..Header::default()
            };
            if let Some(slot) = st.workers.get_mut(w) {
                slot.send_or_queue(&header, msg.as_bytes(), st.now, &mut st.wake_watch);
            }
        };
        let callee = header.function_id;
        if callee as usize >= self.functions.len() {
            reply_err(
                self,
                STATUS_UNKNOWN_FUNCTION,
                format!("no function with id {callee}"),
            );
            return Ok(());
        }
        let max_depth = self.ctx.config.functions[callee as usize].max_call_depth;
        if depth > max_depth {
            let name = self.functions[callee as usize].name.clone();
            reply_err(
                self,
                STATUS_CALL_DEPTH,
                format!("call to {name} exceeds max_call_depth {max_depth} (a call cycle?)"),
            );
            return Ok(());
        }
        self.adjust_outstanding(w, 1);
        let origin = Origin::Internal {
            worker: w,
            local_id: header.call_id,
        };
        let flags = header.flags & protocol::FLAG_QUERY;
        if let super::dispatch::Admission::Rejected((status, msg)) = self.admit(
            NewCall {
                function: callee,
                origin,
                parent: Some(parent),
                depth,
                deadline: remaining,
                flags,
            },
            payload,
        ) {
            self.adjust_outstanding(w, -1);
            reply_err(self, status, msg);
        }
        let _ = server;
        Ok(())
    }

    /// Handles a `Complete` from worker `w` for the call it was running.
    pub(crate) fn complete<T: Transport>(
        &mut self,
        w: Key,
        header: &Header,
        payload: &[u8],
        server: &mut HttpServer<T>,
    ) -> Result<(), String> {
        let key = call_key(self.index, header.call_id);
        let slot = self.workers.get(w).expect("polled worker exists");
        if key.is_none() || slot.busy != key {
            return Err(format!(
                "completion for call {:#x}, but the worker runs {}",
                header.call_id,
                match slot.busy {
                    Some(k) => format!("call {:#x}", call_id(self.index, k)),
                    None => "nothing".to_string(),
                }
            ));
        }
        let key = key.expect("checked");
        let f = slot.function;
        self.make_idle(w);
        let exec_ns = header.t1_ns.saturating_sub(header.t0_ns);
        // The call is gone if its deadline passed: the late result is dropped.
        if let Some(call) = self.calls.remove(key) {
            let in_system = self.now_ns.saturating_sub(call.received_ns).max(exec_ns);
            self.functions[f as usize].limiter.on_completion(in_system);
            self.functions[f as usize].in_flight -= 1;
            let outcome = Outcome {
                status: header.status,
                flags: header.flags,
                payload,
                exec_ns,
            };
            self.deliver(&call, &outcome, server);
        }
        self.dispatch_pending(f, server);
        Ok(())
    }

    /// Answers every call with an error (shutdown past the drain timeout).
    pub(crate) fn fail_all<T: Transport>(
        &mut self,
        status: u16,
        message: &str,
        server: &mut HttpServer<T>,
    ) {
        let mut keys = std::mem::take(&mut self.keys);
        self.calls.keys_into(&mut keys);
        for &key in &keys {
            if let Some(call) = self.calls.get(key) {
                if call.worker.is_none() {
                    let f = call.function as usize;
                    self.functions[f].pending.retain(|k| *k != key);
                }
            }
            self.fail_call(key, status, message, server);
        }
        self.keys = keys;
    }

    /// Answers every call whose deadline has passed with 504.
    pub(crate) fn expire_deadlines<T: Transport>(&mut self, server: &mut HttpServer<T>) {
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        // A forwarded call is cut off by the loop running it, at the same
        // deadline: its answer says where the call was and how long it ran.
        // This loop waits a grace longer, for the case that loop has gone.
        keys.extend(
            self.calls
                .iter()
                .filter(|(_, c)| match c.forwarded_to {
                    None => c.deadline <= self.now,
                    Some(_) => c.deadline + FORWARDED_DEADLINE_GRACE <= self.now,
                })
                .map(|(k, _)| k),
        );
        for &key in &keys {
            let Some(call) = self.calls.get(key) else {
                continue;
            };
            let f = call.function;
            let forwarded_to = call.forwarded_to;
            let queued = call.worker.is_none() && forwarded_to.is_none();
            let name = self.functions[f as usize].name.clone();
            let timeout = self.ctx.config.functions[f as usize].timeout;
            if queued {
                self.functions[f as usize].pending.retain(|k| *k != key);
            } else if let Some(slot) = call.worker.and_then(|w| self.workers.get_mut(w)) {
                slot.abandoned_at = Some(self.now);
            }
            // (A forwarded call's cut-off from the loop running it is late:
            // should it come now, it finds nothing here.)
            let whereabouts = match forwarded_to {
                Some(to) => format!(", forwarded to core loop {to}"),
                None if queued => ", still queued".to_owned(),
                None => String::new(),
            };
            let msg = format!(
                "function {name} did not answer within its deadline ({}{whereabouts})",
                crate::config::format_duration(timeout),
            );
            // A running worker stays busy until it completes; its late result is
            // dropped because the call is gone.
            self.fail_call(key, STATUS_DEADLINE, &msg, server);
        }
        self.keys = keys;
    }
}

/// The content type an answer with `status` goes out with: the one the
/// worker set (copied out of shared memory, see
/// [`protocol::split_content_type_copied`]) or the default for the status.
fn response_content_type(copied: Option<&protocol::ContentType>, status: u16) -> &str {
    match copied {
        Some(ct) => ct.as_str(),
        None if status >= 400 => "text/plain; charset=utf-8",
        None => "application/octet-stream",
    }
}

fn header_with(flags: u16) -> Header {
    Header {
        flags,
        ..Header::default()
    }
}

/// How long a call received and dispatched at `call_ns` (0: never
/// dispatched) waited for a worker, as of `now_ns`.
pub(crate) fn queued_ns((received_ns, dispatched_ns): (u64, u64), now_ns: u64) -> u64 {
    if dispatched_ns == 0 {
        now_ns.saturating_sub(received_ns)
    } else {
        dispatched_ns - received_ns.min(dispatched_ns)
    }
}

/// `Server-Timing` with the call's queueing, execution and runtime overhead.
/// Durations are in milliseconds as the header's spec requires, with µs
/// resolution (`exec;dur=0.012` is 12 µs).
/// `call_ns` is the call's received and dispatched time (0: never dispatched).
pub(crate) fn server_timing(out: &mut String, call_ns: (u64, u64), exec_ns: u64, now_ns: u64) {
    use std::fmt::Write;
    let total = now_ns.saturating_sub(call_ns.0);
    let queue = queued_ns(call_ns, now_ns);
    let overhead = total.saturating_sub(queue).saturating_sub(exec_ns);
    // Integer formatting: `{:.3}` of an f64 showed as 3 % of a saturated io
    // core's profile.
    let ms = |ns: u64| {
        let us = (ns + 500) / 1000;
        (us / 1000, us % 1000)
    };
    let ((qi, qf), (ei, ef), (oi, of)) = (ms(queue), ms(exec_ns), ms(overhead));
    let _ = write!(
        out,
        "queue;dur={qi}.{qf:03}, exec;dur={ei}.{ef:03}, overhead;dur={oi}.{of:03}"
    );
}

#[cfg(test)]
mod tests {
    use super::{header_with, protocol, response_content_type, server_timing};

    /// `deliver`'s split of a completion: the content type to send and the body.
    fn split(flags: u16, payload: &[u8]) -> (Option<protocol::ContentType>, &[u8]) {
        protocol::split_content_type_copied(&header_with(flags), payload).unwrap_or((None, payload))
    }

    #[test]
    fn content_type_is_checked_and_sent_from_an_engine_owned_copy() {
        // `slot` stands for the worker's ring slot, which the worker can
        // still write after the engine has split (and the HTTP layer
        // checked) the content type.
        let mut slot = Vec::new();
        protocol::encode_content_type_prefix(&mut slot, "text/html; x=yy");
        slot.extend_from_slice(b"<p>");
        let (ct, body) = split(protocol::FLAG_CONTENT_TYPE, &slot);
        assert_eq!(body, b"<p>");
        // The worker rewrites "yy" into CR/LF plus a header: the copy, which
        // is what gets checked and written, does not change.
        let at = slot.len() - 5;
        slot[at..at + 2].copy_from_slice(b"\r\n");
        let sent = response_content_type(ct.as_ref(), 200);
        assert_eq!(sent, "text/html; x=yy");
        assert!(!sent.bytes().any(|b| b < b' '));
    }

    #[test]
    fn content_type_falls_back_to_the_default() {
        let flag = protocol::FLAG_CONTENT_TYPE;
        // No prefix, a truncated one, a non-UTF-8 one: the default for the
        // status, and the whole payload is the body.
        for (flags, payload) in [
            (0, &b"out"[..]),
            (flag, &[9, b'a'][..]),
            (flag, &[1, 0xff, b'x'][..]),
            (flag, &[][..]),
        ] {
            let (ct, body) = split(flags, payload);
            assert!(ct.is_none(), "{payload:?}");
            assert_eq!(body, payload);
            assert_eq!(
                response_content_type(ct.as_ref(), 200),
                "application/octet-stream"
            );
            assert_eq!(
                response_content_type(ct.as_ref(), 500),
                "text/plain; charset=utf-8"
            );
        }
        // CR/LF set by the worker in the first place is copied as it is: the
        // HTTP layer refuses it on the copy and the client gets a 500
        // (engine/tests/fault_protocol.rs covers that end to end).
        let mut slot = Vec::new();
        protocol::encode_content_type_prefix(&mut slot, "a\r\nX-Injected: 1");
        let (ct, _) = split(flag, &slot);
        assert_eq!(
            response_content_type(ct.as_ref(), 200),
            "a\r\nX-Injected: 1"
        );
    }

    #[test]
    fn server_timing_is_in_milliseconds_rounded_to_the_microsecond() {
        let mut out = String::new();
        // Received at 1 ms, dispatched 1.2345 ms later, ran 2 µs, answered
        // at 1 ms + 1.2345 ms + 2 µs + 0.4996 µs.
        let received = 1_000_000;
        let dispatched = received + 1_234_500;
        server_timing(
            &mut out,
            (received, dispatched),
            2_000,
            dispatched + 2_000 + 500,
        );
        assert_eq!(out, "queue;dur=1.235, exec;dur=0.002, overhead;dur=0.001");
        out.clear();
        // Never dispatched: all of it is queueing; 12.3456 s stays exact.
        server_timing(&mut out, (received, 0), 0, received + 12_345_600_000);
        assert_eq!(
            out,
            "queue;dur=12345.600, exec;dur=0.000, overhead;dur=0.000"
        );
    }
}
