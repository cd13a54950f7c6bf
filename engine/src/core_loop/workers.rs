//! The loop's workers: polling their rings, taking in new ones, burying dead
//! ones, and sizing each function's pool.
//!
//! Spawning a process takes milliseconds, so the loop only *asks* the
//! [`Spawner`](crate::worker::Spawner) thread and takes the result from a queue
//! on a later turn. A worker's death is seen at once through its pidfd, which
//! sits in the loop's epoll set: the call it was running fails with 502 naming
//! the exit, and the pool is refilled (backed off if it keeps dying).

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nocturne_ipc::channel::{Receiver, RecvError, SendError, Sender};
use nocturne_ipc::message::{Header, Kind};
use nocturne_net::http::HttpServer;
use nocturne_net::Transport;

use nocturne_functions::protocol::STATUS_WORKER_CRASHED;

use super::calls::call_id;
use super::wake_seats::{Unconfirmed, WakeSeats, WakeWatch};
use super::{LoopState, RING_BUDGET, WORKER_TOKEN_BASE};
use crate::slab::Key;
use crate::worker::{ExitStatus, SpawnRequest, Worker};
use nocturne_ipc::wake_board::{Slot, WakeSeat};

/// A worker as its loop sees it.
pub(crate) struct WorkerSlot {
    pub worker: Worker,
    pub function: u32,
    pub sender: Sender,
    /// Its response ring. `None` only while [`LoopState::poll_workers`] has
    /// it out: a message is handled in place, its payload read straight from
    /// shared memory, while the handler borrows the rest of the loop.
    pub receiver: Option<Receiver>,
    /// The call it runs.
    pub busy: Option<Key>,
    pub idle_since: std::time::Instant,
    /// Internal calls it has in flight.
    pub outstanding: u32,
    /// Messages that did not fit its request ring, sent before anything new.
    pub backlog: VecDeque<(Header, Vec<u8>)>,
    /// Set when the worker broke the protocol on its side of the ring; the
    /// loop disconnects it on its next look.
    pub broken: Option<String>,
    /// When the call it runs was answered 504 without it: a worker still busy
    /// [`STUCK_GRACE`] later is killed and replaced.
    pub abandoned_at: Option<std::time::Instant>,
    /// The engine killed it for that: its death is no crash (no back-off,
    /// no `crash_looping`; a function whose calls overrun their deadline
    /// is not failing to start).
    pub killed_as_stuck: bool,
    /// The core it has to itself (spinning workers), returned when it goes.
    pub own_core: Option<usize>,
    /// A message sent to it (seated) that it has not been seen to take.
    pub unconfirmed: Option<Unconfirmed>,
}

/// Why a worker leaves its loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Departure {
    /// Its process exited and was reaped: nothing of it runs any more.
    Died,
    /// It broke the protocol and was sent `SIGKILL`; it may run a moment
    /// longer.
    Disconnected,
    /// Scaled down while idle.
    Retired,
    /// Killed by the engine, still running a call past its deadline.
    KilledAsStuck,
}

/// How long a worker may keep running a call that already timed out.
pub(crate) const STUCK_GRACE: Duration = Duration::from_secs(1);

impl WorkerSlot {
    /// Sends one message into its request ring; a seated worker's message
    /// is watched until it is taken (module `wake_seats`).
    pub fn try_send(
        &mut self,
        header: &Header,
        payload: &[u8],
        now: Instant,
        watch: &mut WakeWatch,
    ) -> Result<(), SendError> {
        self.sender.try_send(header, payload)?;
        if self.sender.seat().is_some() {
            let delegated = self.sender.take_new_delegation();
            watch.sent(&mut self.unconfirmed, now, delegated);
        }
        Ok(())
    }

    /// Once the grace of its unconfirmed message is over, makes sure the
    /// worker is awake if it has not taken everything sent.
    fn check_unconfirmed(&mut self, now: Instant, watch: &mut WakeWatch) {
        if watch.due(&mut self.unconfirmed, now) {
            self.sender.wake_if_unreleased();
        }
    }

    /// Sends now, or keeps the message in order for a later turn when the ring
    /// or arena is full; nothing is dropped.
    pub fn send_or_queue(
        &mut self,
        header: &Header,
        payload: &[u8],
        now: Instant,
        watch: &mut WakeWatch,
    ) {
        if self.backlog.is_empty() {
            match self.try_send(header, payload, now, watch) {
                Ok(()) => return,
                Err(SendError::RingFull) | Err(SendError::ArenaFull) => {}
                Err(SendError::Protocol(e)) => {
                    self.broken = Some(format!("corrupt release position: {e}"));
                    return;
                }
                Err(e @ SendError::TooLarge { .. }) => {
                    // The callee's output exceeds what the caller's channel
                    // carries: the caller gets an error instead.
                    let msg = format!("result does not fit the channel: {e}");
                    let h = Header {
                        status: 500,
                        flags: 0,
                        ..*header
                    };
                    self.backlog.push_back((h, msg.into_bytes()));
                    return;
                }
            }
        }
        self.backlog.push_back((*header, payload.to_vec()));
    }

    /// Sends what the backlog holds, in order, until the ring is full again.
    fn flush_backlog(&mut self, now: Instant, watch: &mut WakeWatch) {
        while let Some((header, payload)) = self.backlog.pop_front() {
            match self.try_send(&header, &payload, now, watch) {
                Ok(()) | Err(SendError::TooLarge { .. }) => {}
                Err(SendError::Protocol(e)) => {
                    self.broken = Some(format!("corrupt release position: {e}"));
                    self.backlog.push_front((header, payload));
                    break;
                }
                Err(SendError::RingFull) | Err(SendError::ArenaFull) => {
                    self.backlog.push_front((header, payload));
                    break;
                }
            }
        }
    }
}

impl LoopState {
    /// Takes messages from every worker's response ring; returns how many.
    ///
    /// Each message is handled while it still sits in the ring, so a
    /// completion's payload goes from shared memory straight into the HTTP
    /// response (or into the caller's ring) with no copy in between; the slot
    /// is released when the message is dropped, before the next one is read.
    pub(crate) fn poll_workers<T: Transport>(&mut self, server: &mut HttpServer<T>) -> usize {
        let mut work = 0;
        let mut keys = std::mem::take(&mut self.keys);
        self.workers.keys_into(&mut keys);
        for &w in &keys {
            let Some(slot) = self.workers.get_mut(w) else {
                continue;
            };
            // Most workers have nothing to say on most turns: look (one load
            // of the next slot's seq) before moving the 224-byte receiver out
            // and back. A spinning loop with 8 idle workers went from 1.48 M
            // to 2.17 M turns/s (676 → 460 ns a turn; 1 worker: 450 → 430).
            // A worker marked broken (by a send that found its ring
            // corrupt) still goes the whole way: it is disconnected below.
            if self.wake_watch.any() {
                slot.check_unconfirmed(self.now, &mut self.wake_watch);
            }
            if slot.receiver.as_ref().is_none_or(|r| r.is_empty()) {
                if !slot.backlog.is_empty() {
                    slot.flush_backlog(self.now, &mut self.wake_watch);
                }
                if slot.broken.is_none() {
                    continue;
                }
            }
            let Some(mut receiver) = slot.receiver.take() else {
                continue;
            };
            let mut violation = None;
            for _ in 0..RING_BUDGET {
                let Some(slot) = self.workers.get_mut(w) else {
                    break;
                };
                if !slot.backlog.is_empty() {
                    slot.flush_backlog(self.now, &mut self.wake_watch);
                }
                let msg = match receiver.try_recv() {
                    Ok(None) => break,
                    Ok(Some(msg)) => msg,
                    Err(e) => {
                        violation = Some(format!("corrupt message: {e}"));
                        break;
                    }
                };
                work += 1;
                let header = *msg.header();
                let result = match header.kind {
                    Kind::Complete => self.complete(w, &header, msg.payload(), server),
                    Kind::Invoke => self.internal_invoke(w, &header, msg.payload(), server),
                    Kind::Unknown(raw) => Err(format!("unknown message kind {raw}")),
                };
                drop(msg);
                if let Err(e) = result {
                    violation = Some(e);
                    break;
                }
            }
            // Neither handler removes worker `w`; if it went anyway, its
            // receiver goes with it.
            if let Some(slot) = self.workers.get_mut(w) {
                slot.receiver = Some(receiver);
            }
            if violation.is_none() {
                violation = self.workers.get_mut(w).and_then(|s| s.broken.take());
            }
            if let Some(why) = violation {
                self.disconnect_worker(w, &format!("protocol violation: {why}"), server);
            }
        }
        self.keys = keys;
        work
    }

    /// Takes in workers the spawner finished (or failed) starting.
    pub(crate) fn take_spawned<T: Transport>(&mut self, server: &mut HttpServer<T>) -> usize {
        let mut work = 0;
        while let Ok((tag, result)) = self.spawn_rx.try_recv() {
            work += 1;
            let (f, own_core, seat) = unpack_spawn_tag(tag);
            if result.is_err() {
                self.give_back_core(own_core);
                self.give_back_seat(seat);
            }
            self.functions[f as usize].starting -= 1;
            match result {
                Ok(worker) => self.add_worker(f, worker, own_core, seat, server),
                Err(e) => {
                    let fs = &mut self.functions[f as usize];
                    let delay = fs.backoff.on_start_failure(self.now);
                    log::info!(
                        "nocturne: cannot start a worker of {}: {e}; retrying in {} ms",
                        fs.name,
                        delay.as_millis()
                    );
                    fs.restart_at = Some(self.now + delay);
                    self.ctx
                        .status
                        .set_crash_looping(usize::from(self.index), f as usize, true);
                    if fs.workers == 0 && fs.starting == 0 {
                        // Nobody will run the waiting calls soon: answer them.
                        let pending: Vec<Key> = fs.pending.drain(..).collect();
                        let msg = format!("no worker of {} could be started: {e}", fs.name);
                        for key in pending {
                            self.fail_call(key, STATUS_WORKER_CRASHED, &msg, server);
                        }
                    }
                    self.publish(f);
                }
            }
        }
        work
    }

    fn add_worker<T: Transport>(
        &mut self,
        f: u32,
        mut worker: Worker,
        own_core: Option<usize>,
        seat: Option<Slot>,
        server: &mut HttpServer<T>,
    ) {
        let (mut sender, receiver) = worker
            .take_end()
            .expect("a new worker has its channel")
            .split();
        // The worker took this seat before it answered ready: the doorbell
        // it sleeps on is the board's word from its first wait on.
        if let (Some(slot), Some(seats)) = (seat, &self.wake_seats) {
            sender.take_seat(seats.seat(slot));
        }
        let pid = worker.pid;
        let slot = WorkerSlot {
            worker,
            function: f,
            sender,
            receiver: Some(receiver),
            busy: None,
            idle_since: self.now,
            outstanding: 0,
            backlog: VecDeque::new(),
            broken: None,
            abandoned_at: None,
            killed_as_stuck: false,
            own_core,
            unconfirmed: None,
        };
        let key = self.workers.insert(slot);
        let pidfd = self
            .workers
            .get(key)
            .expect("inserted")
            .worker
            .pidfd()
            .as_raw_fd();
        if let Err(e) = server
            .transport_mut()
            .register_wake_fd(pidfd, WORKER_TOKEN_BASE + key.index())
        {
            log::info!("nocturne: cannot watch worker pid {pid}: {e}; dropping it");
            self.workers.remove(key);
            self.give_back_core(own_core);
            self.give_back_seat(seat);
            return;
        }
        let fs = &mut self.functions[f as usize];
        fs.workers += 1;
        fs.idle.push(key);
        log::info!(
            "nocturne: loop {}: worker {} pid {pid} ready ({} of {})",
            self.index,
            fs.name,
            fs.workers,
            fs.max_share
        );
        self.dispatch_pending(f, server);
    }

    /// Notes that the pidfd of slot `index` fired (called from the epoll callback).
    pub(crate) fn on_worker_token(&mut self, token: usize) {
        self.exited.push(token - WORKER_TOKEN_BASE);
    }

    /// Buries workers whose pidfd fired: fails their call, refills the pool.
    pub(crate) fn reap_exited<T: Transport>(&mut self, server: &mut HttpServer<T>) -> usize {
        let mut work = 0;
        let exited = std::mem::take(&mut self.exited);
        for &index in &exited {
            let Some(w) = self.workers.key_at(index) else {
                continue;
            };
            let status = self.workers.get_mut(w).and_then(|s| s.worker.try_reap());
            let Some(status) = status else { continue };
            work += 1;
            let why = describe_exit(&status);
            let stuck = self.workers.get(w).is_some_and(|s| s.killed_as_stuck);
            let departure = if stuck {
                Departure::KilledAsStuck
            } else {
                Departure::Died
            };
            self.remove_worker(w, &why, departure, server);
        }
        self.exited = exited;
        self.exited.clear();
        work
    }

    /// Kills a worker that broke the protocol and treats it as crashed.
    fn disconnect_worker<T: Transport>(&mut self, w: Key, why: &str, server: &mut HttpServer<T>) {
        if let Some(slot) = self.workers.get(w) {
            log::info!(
                "nocturne: worker {} pid {}: {why}; killing it",
                self.functions[slot.function as usize].name,
                slot.worker.pid
            );
            slot.worker.kill();
        }
        self.remove_worker(w, why, Departure::Disconnected, server);
    }

    /// Removes worker `w` and refills the pool if it crashed. The call it
    /// had fails with 502 — unless the worker died without taking it: then
    /// the call goes back to the front of the queue for another worker.
    fn remove_worker<T: Transport>(
        &mut self,
        w: Key,
        why: &str,
        departure: Departure,
        server: &mut HttpServer<T>,
    ) {
        let crashed = matches!(departure, Departure::Died | Departure::Disconnected);
        let outstanding = self.workers.get(w).map_or(0, |s| s.outstanding);
        self.adjust_outstanding(w, -(outstanding as i32));
        let Some(mut slot) = self.workers.remove(w) else {
            return;
        };
        let _ = server
            .transport_mut()
            .deregister_wake_fd(slot.worker.pidfd().as_raw_fd());
        let f = slot.function;
        let name = self.functions[f as usize].name.clone();
        let pid = slot.worker.pid;
        {
            let fs = &mut self.functions[f as usize];
            fs.workers -= 1;
            fs.idle.retain(|k| *k != w);
        }
        self.give_back_core(slot.own_core);
        // Its seat is its sender's (taken in `add_worker`).
        self.give_back_seat(slot.sender.seat().map(WakeSeat::slot));
        self.wake_watch.forget(&mut slot.unconfirmed);
        let requeued = match slot.busy {
            Some(call) => self.hand_back_or_fail(call, slot, departure, why, server),
            None => false,
        };
        // A hand-back has said it already, with the call it saved.
        if departure != Departure::Retired && !requeued {
            log::info!("nocturne: worker {name} pid {pid} {why}");
        }
        if crashed {
            let fs = &mut self.functions[f as usize];
            let delay = fs.backoff.on_failure(self.now);
            if !delay.is_zero() {
                // Not "next restart": below min_workers a replacement is
                // due then, above it only demand starts one.
                log::info!(
                    "nocturne: {name} keeps crashing ({} worker deaths in a row); \
                     no worker of it starts for {} ms",
                    fs.backoff.consecutive_failures(),
                    delay.as_millis()
                );
                self.ctx
                    .status
                    .set_crash_looping(usize::from(self.index), f as usize, true);
            }
            fs.restart_at = Some(self.now + delay);
        }
        self.publish(f);
        self.restart_if_due(f);
        if requeued {
            self.dispatch_pending(f, server);
        }
        if crashed {
            self.fail_calls_due_before_restart(f, server);
        }
    }

    /// Deals with call `key` of `gone`, a worker that just left (`why`):
    /// back to the queue when the worker died without taking it (once per
    /// call), else a 502 that says which. Only a reaped worker is sure to
    /// take nothing more; one that was just sent `SIGKILL` may still be
    /// reading its ring. Returns whether the call was queued again.
    fn hand_back_or_fail<T: Transport>(
        &mut self,
        key: Key,
        gone: WorkerSlot,
        departure: Departure,
        why: &str,
        server: &mut HttpServer<T>,
    ) -> bool {
        let Some(handed_back) = self.calls.get(key).map(|c| c.handed_back) else {
            // Answered already (504: a worker stuck past the deadline, then
            // killed); nothing waits for it.
            return false;
        };
        let name = self.functions[gone.function as usize].name.clone();
        let name = name.as_str();
        let pid = gone.worker.pid;
        let untaken = match departure {
            Departure::Died => self.untaken_input(gone.sender, key, name, pid),
            Departure::Disconnected | Departure::Retired | Departure::KilledAsStuck => None,
        };
        let Some((flags, input)) = untaken else {
            let msg = format!("worker of {name} (pid {pid}) {why} while running the call");
            self.fail_call(key, STATUS_WORKER_CRASHED, &msg, server);
            return false;
        };
        let id = call_id(self.index, key);
        if handed_back {
            let msg = format!(
                "worker of {name} (pid {pid}) {why} before taking the call, \
                 and so did the worker it was given to first"
            );
            self.fail_call(key, STATUS_WORKER_CRASHED, &msg, server);
            return false;
        }
        log::info!(
            "nocturne: worker {name} pid {pid} {why} before taking call {id:#x}; \
             it is queued again for another worker"
        );
        self.requeue(key, flags, input);
        true
    }

    /// The input of call `key` if worker `pid`'s request ring still holds its
    /// `Invoke` unreleased. The worker SDK releases a request before running
    /// it (it copies the input out first), so such a call never ran. `None`
    /// when it was taken, or when what the dead worker left in its ring does
    /// not read back cleanly (then the call fails as if it had run).
    fn untaken_input(
        &self,
        requests: Sender,
        key: Key,
        name: &str,
        pid: u32,
    ) -> Option<(u16, Vec<u8>)> {
        let id = call_id(self.index, key);
        let find = || -> Result<Option<(u16, Vec<u8>)>, RecvError> {
            let mut unreleased = requests.into_unreleased()?;
            while let Some(m) = unreleased.next_message()? {
                if m.header().kind == Kind::Invoke && m.header().call_id == id {
                    return Ok(Some((m.header().flags, m.payload().to_vec())));
                }
            }
            Ok(None)
        };
        find().unwrap_or_else(|e| {
            log::info!("nocturne: worker {name} pid {pid} left its request ring unreadable: {e}");
            None
        })
    }

    /// Asks for workers until `f` has its minimum (respecting a back-off).
    pub(crate) fn ensure_min_workers(&mut self, f: u32) {
        let fs = &self.functions[f as usize];
        let missing = fs.min_share.saturating_sub(fs.workers + fs.starting);
        for _ in 0..missing {
            self.request_spawn(f);
        }
    }

    fn restart_if_due(&mut self, f: u32) {
        let fs = &mut self.functions[f as usize];
        if fs.restart_at.is_some_and(|t| t > self.now) {
            return;
        }
        fs.restart_at = None;
        self.ensure_min_workers(f);
        // Calls may be waiting with no worker at all, or for a pool that a
        // death left smaller than their demand: the pool otherwise grows only
        // when a call arrives, and none may come before their deadlines.
        let fs = &self.functions[f as usize];
        if !fs.pending.is_empty() && fs.workers + fs.starting == 0 {
            self.request_spawn(f);
        } else if !fs.pending.is_empty() {
            self.scale_up(f);
        }
    }

    /// Grows `f`'s pool toward its concurrency limit.
    pub(crate) fn scale_up(&mut self, f: u32) {
        let fs = &self.functions[f as usize];
        if fs.restart_at.is_some() {
            return;
        }
        let pool = fs.workers + fs.starting;
        // Workers blocked on their own internal calls do not serve: add them.
        // A standing queue is demand too, whatever the averages say yet.
        let demand = fs.in_flight + fs.pending.len();
        let wanted = (fs.limiter.limit() + fs.waiting)
            .max(demand)
            .min(fs.max_share);
        if pool < wanted && fs.idle.is_empty() {
            self.request_spawn(f);
        }
    }

    fn request_spawn(&mut self, f: u32) {
        let own_core = match &self.ctx.spin_cores {
            Some(pool) => match pool.take() {
                Some(core) => Some(core),
                None => {
                    // Configuration checks make this unlikely (at least one
                    // worker core per max worker); never share a spinning core.
                    log::info!(
                        "nocturne: no free worker core for another spinning worker of {}",
                        self.functions[f as usize].name
                    );
                    return;
                }
            },
            None => None,
        };
        let mut spec = crate::engine::worker_spec(&self.ctx, f, usize::from(self.index), own_core);
        spec.wake_seat = self.wake_seats.as_mut().and_then(WakeSeats::take);
        let seat = spec.wake_seat.as_ref().map(WakeSeat::slot);
        self.functions[f as usize].starting += 1;
        self.ctx.spawner.request(SpawnRequest {
            spec,
            reply: self.spawn_tx.clone(),
            wake_efd: self.wake_fd.clone(),
            tag: pack_spawn_tag(f, own_core, seat),
        });
    }

    fn give_back_core(&self, core: Option<usize>) {
        if let (Some(core), Some(pool)) = (core, &self.ctx.spin_cores) {
            pool.give_back(core);
        }
    }

    fn give_back_seat(&mut self, seat: Option<Slot>) {
        if let (Some(slot), Some(seats)) = (seat, &mut self.wake_seats) {
            seats.give_back(slot);
        }
    }

    /// Deadlines, stuck workers, restarts, scale-down.
    pub(crate) fn run_timers<T: Transport>(&mut self, server: &mut HttpServer<T>) {
        self.expire_deadlines(server);
        self.kill_stuck_workers();
        for f in 0..self.functions.len() as u32 {
            let fs = &mut self.functions[f as usize];
            if fs.restart_at.is_some_and(|t| t <= self.now) {
                self.restart_if_due(f);
            }
            let fs = &mut self.functions[f as usize];
            if fs.backoff.is_stable(self.now) {
                self.ctx
                    .status
                    .set_crash_looping(usize::from(self.index), f as usize, false);
            }
            self.scale_down(f, server);
            // Calls that found a worker's ring full wait for a later look.
            let fs = &self.functions[f as usize];
            if !fs.pending.is_empty() && !fs.idle.is_empty() {
                self.dispatch_pending(f, server);
            }
        }
    }

    /// Kills workers still running a call [`STUCK_GRACE`] after its deadline;
    /// their pidfd then reports the death and the pool is refilled.
    fn kill_stuck_workers(&mut self) {
        for (_, slot) in self.workers.iter_mut() {
            if slot
                .abandoned_at
                .is_some_and(|t| self.now.duration_since(t) >= STUCK_GRACE)
            {
                slot.abandoned_at = None;
                log::info!(
                    "nocturne: worker {} pid {} is stuck {} ms past its call's deadline; killing it",
                    self.functions[slot.function as usize].name,
                    slot.worker.pid,
                    STUCK_GRACE.as_millis()
                );
                slot.killed_as_stuck = true;
                slot.worker.kill();
            }
        }
    }

    /// Retires workers idle for longer than `idle_timeout`, down to the
    /// minimum; never while calls of the function wait (an idle worker is
    /// then only held back by the concurrency limit, which may rise again).
    fn scale_down<T: Transport>(&mut self, f: u32, server: &mut HttpServer<T>) {
        let idle_timeout: Duration = self.ctx.config.functions[f as usize].idle_timeout;
        loop {
            let fs = &self.functions[f as usize];
            if fs.workers <= fs.min_share || !fs.pending.is_empty() {
                return;
            }
            // The LIFO's bottom is the longest idle.
            let Some(&oldest) = fs.idle.first() else {
                return;
            };
            let Some(slot) = self.workers.get(oldest) else {
                return;
            };
            if self.now.duration_since(slot.idle_since) < idle_timeout {
                return;
            }
            let pid = slot.worker.pid;
            log::info!(
                "nocturne: loop {}: retiring idle worker {} pid {pid}",
                self.index,
                fs.name
            );
            self.remove_worker(oldest, "was retired", Departure::Retired, server);
        }
    }

    /// Arms every ring's doorbell before an epoll sleep; `false` if a message
    /// is already waiting (then the loop must not sleep).
    pub(crate) fn arm_all(&mut self) -> bool {
        let mut all = true;
        for (_, slot) in self.workers.iter() {
            if slot.receiver.as_ref().is_some_and(|r| !r.arm_sleep()) {
                all = false;
                break;
            }
        }
        all
    }

    /// Disarms every doorbell after waking.
    pub(crate) fn disarm_all(&mut self) {
        for (_, slot) in self.workers.iter() {
            if let Some(r) = &slot.receiver {
                r.disarm_sleep();
            }
        }
    }

    /// Ends every worker of this loop (dropping a worker closes its control
    /// socket; the worker exits on EOF, and `Worker`'s drop reaps it).
    pub(crate) fn shutdown(&mut self) {
        let mut keys = Vec::new();
        self.workers.keys_into(&mut keys);
        for w in keys {
            self.workers.remove(w);
        }
    }
}

/// A spawn request's tag: the function in the low 32 bits, the worker's own
/// core (plus one; 0 = none) in the next 24, its wake-board slot (plus one;
/// 0 = none) in the top 8.
fn pack_spawn_tag(f: u32, own_core: Option<usize>, seat: Option<Slot>) -> u64 {
    let core = own_core.map_or(0, |c| c as u64 + 1);
    assert!(
        core < 1 << 24,
        "core {own_core:?} beyond the spawn tag's range"
    );
    let seat = seat.map_or(0, |s| s.index() as u64 + 1);
    u64::from(f) | (core << 32) | (seat << 56)
}

fn unpack_spawn_tag(tag: u64) -> (u32, Option<usize>, Option<Slot>) {
    let core = ((tag >> 32) & ((1 << 24) - 1)) as usize;
    let seat = ((tag >> 56) as usize)
        .checked_sub(1)
        .map(|i| Slot::new(i).expect("packed from a slot"));
    (tag as u32, core.checked_sub(1), seat)
}

fn describe_exit(status: &ExitStatus) -> String {
    match status {
        ExitStatus::Unknown => "exited (status collected elsewhere)".to_string(),
        other => format!("{other}"),
    }
}
