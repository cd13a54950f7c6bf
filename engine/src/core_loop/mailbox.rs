//! Calls between core loops.
//!
//! Each loop owns a share of every function's workers: `max_workers` spread
//! over the loops, the first loops taking the remainder. A function with
//! fewer workers than there are loops leaves some loops with no share at all;
//! those loops hand the function's calls to a loop that has one, and the
//! answer comes back the same way (docs/design.md §4). The connection, or the calling
//! worker, stays with the loop that took the call: only the call travels.
//! A loop with workers of its own never forwards, so the hot path is the
//! same as with one loop.
//!
//! ```text
//!  loop A (no share of f)                         loop B (owns f's workers)
//!  admit(f) ─ Call{token=A's key, input} ─▶ inbox ─▶ admit(f, Origin::Remote{A, token})
//!  (call kept in A's table, deadline ticking)        … queue, worker, completion …
//!  deliver(call) ◀─ inbox ◀─ Done{token, status, output} ─ deliver(Origin::Remote)
//! ```
//!
//! An inbox is an `mpsc` channel (a lock-free linked queue on the send side),
//! so every loop may post into every other. A loop reads its inbox on every
//! turn; one that is about to sleep in epoll says so through its
//! [`WakeGate`], and a sender that finds it so writes its eventfd after the
//! send. A spinning loop thus costs its senders no system call, and no letter
//! waits for a sleeping loop (the gate's argument: `nocturne_ipc::wake_gate`).
//! Letters carry owned payloads: an allocation per forwarded call, on a path
//! only under-provisioned functions take.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use nocturne_functions::protocol::{STATUS_CALL_DEPTH, STATUS_OVERLOADED};
use nocturne_ipc::WakeGate;
use nocturne_net::http::HttpServer;
use nocturne_net::Transport;

use super::dispatch::{queued_ns, Admission, NewCall, Outcome};
use super::{Call, LoopState, Origin};
use crate::slab::Key;

/// Letters a loop takes from its inbox per turn.
pub(crate) const MAIL_BUDGET: usize = 64;

/// What one loop sends another.
pub(crate) enum Letter {
    /// Run this call for loop `from`; answer with [`Letter::Done`].
    Call(ForwardedCall),
    /// The answer to a call this loop forwarded.
    Done(ForwardedResult),
}

/// A call handed to the loop that owns its function's workers.
pub(crate) struct ForwardedCall {
    /// The loop that took the call (and answers its origin).
    pub from: u8,
    /// The call's key in `from`'s call table.
    pub token: Key,
    pub function: u32,
    /// Header flags of `input` (`FLAG_QUERY`).
    pub flags: u16,
    /// Depth in a chain of internal calls.
    pub depth: u32,
    /// Time left before the call's deadline when it was posted.
    pub remaining: Duration,
    pub input: Vec<u8>,
    /// Run it only on a worker idle now, else refuse it 508: every worker of
    /// its function on `from` runs one of its callers, so a worker busy here
    /// may well be another (queueing it could wait out its deadline in a
    /// cycle).
    pub only_if_idle: bool,
}

/// The result of a forwarded call.
pub(crate) struct ForwardedResult {
    /// The call's key in the receiving loop's table.
    pub token: Key,
    pub status: u16,
    /// Header flags of `output` (`FLAG_CONTENT_TYPE`).
    pub flags: u16,
    /// Handler execution time, ns (0 when it never ran).
    pub exec_ns: u64,
    /// Time it waited in the owning loop's queue, ns.
    pub queued_ns: u64,
    pub output: Vec<u8>,
}

impl ForwardedResult {
    /// A call the owning loop could not take: answered with `status` and
    /// `message`, never run.
    fn refusal(token: Key, status: u16, message: String) -> Self {
        Self {
            token,
            status,
            flags: 0,
            exec_ns: 0,
            queued_ns: 0,
            output: message.into_bytes(),
        }
    }
}

/// One loop's inbox and the way to every loop's inbox.
pub(crate) struct PostOffice {
    index: u8,
    inbox: mpsc::Receiver<Letter>,
    /// This loop's gate (the one its peers hold for it).
    gate: Arc<WakeGate>,
    peers: Vec<Peer>,
}

struct Peer {
    tx: mpsc::Sender<Letter>,
    gate: Arc<WakeGate>,
    wake: Arc<OwnedFd>,
}

/// Why a letter could not be posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PostError {
    /// That loop has stopped (its inbox is gone).
    #[error("core loop {0} has stopped")]
    Stopped(u8),
}

/// The post offices of `wakes.len()` loops, loop `i`'s at index `i`; `wakes`
/// are the loops' eventfds.
pub(crate) fn post_offices(wakes: &[Arc<OwnedFd>]) -> Vec<PostOffice> {
    let (txs, rxs): (Vec<_>, Vec<_>) = wakes.iter().map(|_| mpsc::channel()).unzip();
    let gates: Vec<_> = wakes.iter().map(|_| Arc::new(WakeGate::new())).collect();
    rxs.into_iter()
        .zip(&gates)
        .enumerate()
        .map(|(index, (inbox, gate))| PostOffice {
            index: u8::try_from(index).expect("at most 256 core loops"),
            inbox,
            gate: gate.clone(),
            peers: txs
                .iter()
                .zip(&gates)
                .zip(wakes)
                .map(|((tx, gate), wake)| Peer {
                    tx: tx.clone(),
                    gate: gate.clone(),
                    wake: wake.clone(),
                })
                .collect(),
        })
        .collect()
}

impl PostOffice {
    /// This loop's index.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Posts `letter` to loop `to`, and wakes it if it may be asleep.
    pub fn post(&self, to: u8, letter: Letter) -> Result<(), PostError> {
        let peer = &self.peers[usize::from(to)];
        peer.tx.send(letter).map_err(|_| PostError::Stopped(to))?;
        if peer.gate.posted() {
            // A failed write leaves the counter full, which wakes the loop
            // as well.
            let _ = crate::sys::signal_eventfd(peer.wake.as_fd());
        }
        Ok(())
    }

    /// The next letter in this loop's inbox, if any.
    pub fn take(&self) -> Option<Letter> {
        let letter = self.inbox.try_recv().ok()?;
        self.gate.taken();
        Some(letter)
    }

    /// Before this loop sleeps in epoll: from now on, letters posted to it
    /// write its eventfd. `false` if letters wait (do not sleep); call
    /// [`awake`](Self::awake) after the sleep either way.
    pub fn may_sleep(&self) -> bool {
        self.gate.arm()
    }

    /// After the sleep (or instead of it): posts stop writing the eventfd.
    pub fn awake(&self) {
        self.gate.disarm();
    }
}

impl LoopState {
    /// Hands a call of a function this loop has no workers of to the next
    /// loop, in turn, of those that have; the call stays in this loop's table
    /// (its deadline runs here too) until the answer comes back.
    pub(crate) fn forward(&mut self, new: NewCall, payload: &[u8]) -> Admission {
        self.forward_to_owner(new, payload, false)
    }

    /// Whether another loop has workers of `f` (a call that cannot run here
    /// may run there).
    pub(crate) fn another_loop_owns(&self, f: u32) -> bool {
        let owners = self
            .ctx
            .config
            .worker_loops(f as usize)
            .map_or(self.ctx.loops, <[usize]>::len);
        self.mail.is_some() && (0..owners).any(|l| l != usize::from(self.index))
    }

    /// [`forward`](Self::forward), to a loop other than this one when
    /// `elsewhere` (a call whose every local worker is busy in its callers).
    pub(crate) fn forward_to_owner(
        &mut self,
        new: NewCall,
        payload: &[u8],
        elsewhere: bool,
    ) -> Admission {
        let f = new.function as usize;
        let refuse = |st: &Self, why: String| {
            Admission::Rejected((
                STATUS_OVERLOADED,
                format!("function {}: {why}", st.functions[f].name),
            ))
        };
        if matches!(new.origin, Origin::Remote { .. }) {
            // Every loop computes the same owners, so this is a bug; refuse
            // rather than pass the call around.
            let why = format!("core loop {} has no workers of it", self.index);
            return refuse(self, why);
        }
        let Some(mail) = &self.mail else {
            // One loop always has a share (max_workers >= 1).
            return refuse(self, "no core loop has workers of it".into());
        };
        // The loops with a share are the first ones (`Config::worker_loops`).
        let owners = self
            .ctx
            .config
            .worker_loops(f)
            .map_or(self.ctx.loops, <[usize]>::len);
        let index = self.index;
        let fs = &mut self.functions[f];
        let mut to = fs.next_owner;
        let step = |l: u8| u8::try_from((usize::from(l) + 1) % owners).expect("loop index");
        if elsewhere && to == index {
            to = step(to);
        }
        fs.next_owner = step(to);
        let timeout = self.ctx.config.functions[f].timeout.min(new.deadline);
        let key = self
            .calls
            .insert(new.to_call(self.now_ns, self.now + timeout, Some(to)));
        let letter = Letter::Call(ForwardedCall {
            from: self.index,
            token: key,
            function: new.function,
            flags: new.flags,
            depth: new.depth,
            remaining: timeout,
            input: payload.to_vec(),
            only_if_idle: elsewhere,
        });
        match mail.post(to, letter) {
            Ok(()) => Admission::Forwarded,
            Err(e) => {
                self.calls.remove(key);
                refuse(self, format!("cannot reach the loop with its workers: {e}"))
            }
        }
    }

    /// Takes letters from the other loops: calls to run, answers to deliver.
    pub(crate) fn take_letters<T: Transport>(&mut self, server: &mut HttpServer<T>) -> usize {
        let mut taken = 0;
        while taken < MAIL_BUDGET {
            let Some(letter) = self.mail.as_ref().and_then(PostOffice::take) else {
                break;
            };
            taken += 1;
            match letter {
                Letter::Call(call) => self.run_forwarded(call),
                Letter::Done(result) => self.finish_forwarded(result, server),
            }
        }
        taken
    }

    /// Admits a call another loop forwarded, as if it had arrived here.
    fn run_forwarded(&mut self, call: ForwardedCall) {
        let rejected = if call.function as usize >= self.functions.len() {
            Some((
                STATUS_OVERLOADED,
                format!("no function with id {}", call.function),
            ))
        } else if call.only_if_idle && self.functions[call.function as usize].idle.is_empty() {
            Some((
                STATUS_CALL_DEPTH,
                format!(
                    "call cycle: every worker of {} is busy in a caller of this call, \
                     or busy on another core loop (raise max_workers or break the cycle)",
                    self.functions[call.function as usize].name
                ),
            ))
        } else {
            let new = NewCall {
                function: call.function,
                origin: Origin::Remote {
                    from: call.from,
                    token: call.token,
                },
                parent: None,
                depth: call.depth,
                deadline: call.remaining,
                flags: call.flags,
            };
            match self.admit(new, &call.input) {
                Admission::Rejected(why) => Some(why),
                _ => None,
            }
        };
        if let Some((status, message)) = rejected {
            self.post_result(
                call.from,
                ForwardedResult::refusal(call.token, status, message),
            );
        }
    }

    /// Delivers the answer to a call this loop forwarded.
    fn finish_forwarded<T: Transport>(
        &mut self,
        result: ForwardedResult,
        server: &mut HttpServer<T>,
    ) {
        // Answered already (its deadline passed here first): the key finds
        // nothing, or, reused since, a call that was not forwarded.
        let forwarded = self
            .calls
            .get(result.token)
            .is_some_and(|c| c.forwarded_to.is_some());
        if !forwarded {
            return;
        }
        let mut call = self.calls.remove(result.token).expect("checked");
        // Server-Timing's queue is the time it waited in the owner's queue.
        call.dispatched_ns = call.received_ns + result.queued_ns;
        let outcome = Outcome {
            status: result.status,
            flags: result.flags,
            payload: &result.output,
            exec_ns: result.exec_ns,
        };
        self.deliver(&call, &outcome, server);
    }

    /// Sends the outcome of `call`, which loop `from` forwarded here, back.
    pub(crate) fn answer_forwarded(
        &mut self,
        from: u8,
        token: Key,
        call: &Call,
        outcome: &Outcome<'_>,
    ) {
        // As `Server-Timing` counts it here: a call never dispatched (its
        // deadline passed in the queue) waited all along.
        let queued_ns = queued_ns((call.received_ns, call.dispatched_ns), self.now_ns);
        self.post_result(
            from,
            ForwardedResult {
                token,
                status: outcome.status,
                flags: outcome.flags,
                exec_ns: outcome.exec_ns,
                queued_ns,
                output: outcome.payload.to_vec(),
            },
        );
    }

    fn post_result(&self, to: u8, result: ForwardedResult) {
        if let Some(mail) = &self.mail {
            // A loop that has stopped has closed the call's connection (or
            // its caller's loop is gone with the engine): nobody waits.
            let _ = mail.post(to, Letter::Done(result));
        }
    }

    /// At shutdown: answers the calls still in the inbox (503), so the loops
    /// that forwarded them do not wait for their deadlines.
    pub(crate) fn close_mail(&mut self) {
        let Some(mail) = self.mail.take() else {
            return;
        };
        while let Some(letter) = mail.take() {
            if let Letter::Call(call) = letter {
                let message = format!("core loop {} is shutting down", mail.index());
                let refusal = ForwardedResult::refusal(call.token, STATUS_OVERLOADED, message);
                let _ = mail.post(call.from, Letter::Done(refusal));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(from: u8, n: u64) -> Letter {
        Letter::Call(ForwardedCall {
            from,
            token: Key::from_u56(n),
            function: 0,
            flags: 0,
            depth: 0,
            remaining: Duration::from_secs(1),
            input: n.to_le_bytes().to_vec(),
            only_if_idle: false,
        })
    }

    #[test]
    fn letters_arrive_in_order_and_wake_only_a_sleeping_receiver() {
        let wakes: Vec<_> = (0..3)
            .map(|_| Arc::new(crate::sys::eventfd().unwrap()))
            .collect();
        let offices = post_offices(&wakes);
        assert_eq!(offices[2].index(), 2);
        // Loop 2 is awake (spinning): posts cost no eventfd write.
        for n in 0..3 {
            offices[0].post(2, call(0, n)).unwrap();
        }
        assert_eq!(read_counter(&wakes[2]), None);
        // Letters wait: loop 2 must not sleep.
        assert!(!offices[2].may_sleep());
        offices[2].awake();
        let mut seen = Vec::new();
        while let Some(Letter::Call(c)) = offices[2].take() {
            seen.push((c.from, c.token.to_u56()));
        }
        assert_eq!(seen, [(0, 0), (0, 1), (0, 2)]);
        // Inbox empty: it may sleep, and from then on every post wakes it.
        assert!(offices[2].may_sleep());
        offices[0].post(2, call(0, 3)).unwrap();
        offices[1].post(2, call(1, 99)).unwrap();
        assert_eq!(read_counter(&wakes[2]), Some(2));
        offices[2].awake();
        offices[1].post(2, call(1, 100)).unwrap();
        assert_eq!(read_counter(&wakes[2]), None);
        seen.clear();
        while let Some(Letter::Call(c)) = offices[2].take() {
            seen.push((c.from, c.token.to_u56()));
        }
        assert_eq!(seen, [(0, 3), (1, 99), (1, 100)]);
        assert!(offices[2].may_sleep(), "every letter taken");
        assert!(offices[0].take().is_none() && offices[1].take().is_none());
    }

    #[test]
    fn posting_to_a_stopped_loop_fails() {
        let wakes: Vec<_> = (0..2)
            .map(|_| Arc::new(crate::sys::eventfd().unwrap()))
            .collect();
        let mut offices = post_offices(&wakes);
        drop(offices.pop());
        assert_eq!(offices[0].post(1, call(0, 1)), Err(PostError::Stopped(1)));
    }

    /// The eventfd's counter (reading resets it), `None` while it is 0;
    /// read through std's `File` (no raw system call needed).
    fn read_counter(fd: &OwnedFd) -> Option<u64> {
        use std::io::Read;
        let mut file = std::fs::File::from(fd.try_clone().unwrap());
        let mut buf = [0u8; 8];
        match file.read(&mut buf) {
            Ok(8) => Some(u64::from_ne_bytes(buf)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            other => panic!("eventfd read: {other:?}"),
        }
    }
}
