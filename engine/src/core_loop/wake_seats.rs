//! The loop's wake board and its seats (docs/architecture.md, "Delegated
//! wakes on a shared core").
//!
//! Each core loop whose workers yield on shared cores has one board
//! ([`nocturne_ipc::wake_board`]). A worker gets a seat when it is spawned
//! (its slot travels in the hello, the board's memfd beside the channel's),
//! and the loop's sender to it takes the same seat: from then on, a wake-up
//! the loop owes that worker is handed to a worker polling on the board, on
//! the sleeper's own core, when one is.
//!
//! Workers are not trusted, and a board is shared by all of a loop's seated
//! workers: one of them may stop or die while it polls, take a request
//! without waking anyone, or write `AWAKE` over another's doorbell word so
//! that the loop thinks a sleeper is up. None of that may leave a worker
//! asleep with its message. So the loop watches every message it sends to
//! a seated worker ([`WakeWatch`]) until the worker has released it, and
//! wakes the worker itself when it has not within a grace period:
//! [`DELEGATION_GRACE`] when the wake was delegated, during which the loop
//! stays awake, and [`UNCONFIRMED_GRACE`] otherwise.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nocturne_ipc::region::RegionError;
use nocturne_ipc::wake_board::{SharedWakeBoard, Slot, WakeSeat, BOARD_SLOTS};

/// How long a delegated wake may take before the loop does it itself.
///
/// A poller serves the board between its yields, a few µs apart on a core
/// whose other tenants are short-lived workers and clients; a tick-long
/// absence (a CPU-bound handler on the core, a stopped process) is what
/// this bounds. A wake done twice is harmless, so erring short costs one
/// system call of the loop's.
pub(crate) const DELEGATION_GRACE: Duration = Duration::from_micros(50);

/// How long a message sent to a seated worker whose wake was not delegated
/// may stay unreleased before the loop wakes the worker anyway (the loop
/// woke it, or it was awake, unless another worker lied on the board).
/// Long, so that a worker that is merely slow to get its core (a busy
/// shared core queues it for a while) does not cost the loop a system call
/// per message. A loop asleep in epoll is back within its timer period
/// (1 ms) while calls are in flight, and a watched message always belongs
/// to one.
pub(crate) const UNCONFIRMED_GRACE: Duration = Duration::from_millis(1);

/// A message sent to a seated worker that the worker has not been seen to
/// take yet.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Unconfirmed {
    /// When the first such message was sent.
    since: Instant,
    /// Whether a wake it needed was delegated to the board.
    delegated: bool,
}

/// The loop's count of its seated workers with unconfirmed messages.
#[derive(Debug, Default)]
pub(crate) struct WakeWatch {
    /// Workers with an [`Unconfirmed`] message.
    watched: usize,
    /// Of those, the ones whose wake was delegated: while there are any,
    /// the loop does not sleep (an epoll sleep lasts a millisecond at
    /// least, the grace is µs).
    delegated: usize,
}

impl WakeWatch {
    /// Whether any message is watched (the loop then checks its workers).
    pub(crate) fn any(&self) -> bool {
        self.watched > 0
    }

    /// Whether a delegated wake is watched (the loop then stays awake).
    pub(crate) fn keeps_awake(&self) -> bool {
        self.delegated > 0
    }

    /// Notes a message just sent to a seated worker whose watch is `entry`;
    /// `delegated`: its wake was delegated.
    pub(crate) fn sent(&mut self, entry: &mut Option<Unconfirmed>, now: Instant, delegated: bool) {
        match entry {
            None => {
                *entry = Some(Unconfirmed {
                    since: now,
                    delegated,
                });
                self.watched += 1;
                self.delegated += usize::from(delegated);
            }
            Some(u) if delegated && !u.delegated => {
                // The grace of a delegated wake runs from now.
                *u = Unconfirmed {
                    since: now,
                    delegated,
                };
                self.delegated += 1;
            }
            Some(_) => {}
        }
    }

    /// Takes `entry` out of the watch if its grace is over at `now` (the
    /// caller then makes sure the worker is awake); whether it did.
    pub(crate) fn due(&mut self, entry: &mut Option<Unconfirmed>, now: Instant) -> bool {
        let Some(u) = *entry else { return false };
        let grace = if u.delegated {
            DELEGATION_GRACE
        } else {
            UNCONFIRMED_GRACE
        };
        if now.saturating_duration_since(u.since) < grace {
            return false;
        }
        self.forget(entry);
        true
    }

    /// Takes `entry` out of the watch (its worker is gone).
    pub(crate) fn forget(&mut self, entry: &mut Option<Unconfirmed>) {
        if let Some(u) = entry.take() {
            self.watched -= 1;
            self.delegated -= usize::from(u.delegated);
        }
    }
}

/// A loop's board and which of its slots are free.
pub(crate) struct WakeSeats {
    board: Arc<SharedWakeBoard>,
    /// Free slots, the longest free first: a slot goes to a new worker as
    /// late as possible, so a retired worker that has not exited yet (it
    /// still maps the board) is gone before its slot is someone else's.
    free: VecDeque<Slot>,
}

impl WakeSeats {
    /// A fresh board for loop `index`, every slot free.
    pub(crate) fn new(index: u8) -> Result<Self, RegionError> {
        let board = SharedWakeBoard::create(&format!("nocturne-wake-board-{index}"))?;
        Ok(Self {
            board: Arc::new(board),
            free: (0..BOARD_SLOTS)
                .map(|i| Slot::new(i).expect("in range"))
                .collect(),
        })
    }

    /// A free seat, if the board has one (a board holds 64; a worker
    /// beyond that waits on its ring's own doorbell, as without a board).
    pub(crate) fn take(&mut self) -> Option<WakeSeat> {
        let slot = self.free.pop_front()?;
        Some(self.seat(slot))
    }

    /// The seat of `slot`, taken earlier with [`take`](Self::take).
    pub(crate) fn seat(&self, slot: Slot) -> WakeSeat {
        WakeSeat::new(self.board.clone(), slot)
    }

    /// Frees the seat of a worker that is gone (or never started): its
    /// bits are cleared, so no delegation goes to it any more.
    pub(crate) fn give_back(&mut self, slot: Slot) {
        let _ = self.board.board().forget(slot);
        debug_assert!(!self.free.contains(&slot), "slot {slot:?} freed twice");
        self.free.push_back(slot);
    }

    #[cfg(test)]
    fn free_seats(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nocturne_ipc::wake_board::Delegation;

    #[test]
    fn seats_run_out_at_the_boards_size_and_come_back_last_in_line() {
        let mut seats = WakeSeats::new(0).unwrap();
        let taken: Vec<WakeSeat> = (0..BOARD_SLOTS).map(|_| seats.take().unwrap()).collect();
        assert!(seats.take().is_none(), "a board has {BOARD_SLOTS} slots");
        seats.give_back(taken[3].slot());
        seats.give_back(taken[1].slot());
        assert_eq!(seats.free_seats(), 2);
        // Oldest freed first.
        assert_eq!(seats.take().unwrap().slot(), taken[3].slot());
        assert_eq!(seats.take().unwrap().slot(), taken[1].slot());
    }

    #[test]
    fn a_freed_seat_attracts_no_delegation() {
        let mut seats = WakeSeats::new(1).unwrap();
        let poller = seats.take().unwrap();
        let sleeper = seats.take().unwrap();
        poller.board().enter_poll(poller.slot());
        assert_eq!(
            sleeper.board().delegate(sleeper.slot()),
            Delegation::Delegated
        );
        // The poller dies polling: once its seat is given back, wakes are
        // the loop's own again.
        seats.give_back(poller.slot());
        sleeper.board().serve();
        assert_eq!(
            sleeper.board().delegate(sleeper.slot()),
            Delegation::WakeYourself
        );
    }
}
