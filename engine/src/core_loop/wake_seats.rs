//! The loop's wake board and its seats (docs/architecture.md, "Delegated
//! wakes on a shared core").
//!
//! Each core loop whose workers yield on shared cores has one board
//! ([`nocturne_ipc::wake_board`]). A worker gets a seat when it is spawned
//! (its slot travels in the hello, the board's memfd beside the channel's),
//! and the loop's sender to it takes the same seat: from then on, a wake-up
//! the loop owes that worker is handed to a worker polling on the board, on
//! the sleeper's own core, when one is. What the loop must still do is
//! settle each delegated wake after [`DELEGATION_GRACE`]: a poller that
//! stopped or died, or that took the request without waking (workers are
//! not trusted), must not leave a worker asleep with its message.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

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
