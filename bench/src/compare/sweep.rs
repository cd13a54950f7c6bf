//! The decisions of `bench compare`, free of I/O so they are tested alone:
//! whether a run kept up with its rate ([`KeepUp`]), the coarse search for
//! rpc-hyper's saturation rate S ([`SaturationSearch`]: double until a
//! rate is missed, then bisect a few times), and the per-system ladder of
//! rates around S that finds the highest rate meeting a latency objective
//! ([`SloLadder`]).
//!
//! Every rate is an integer number of requests per second, so every
//! system is offered exactly the same rates.

use std::time::Duration;

/// Multiples of S the ladder may run, ascending.
pub const LADDER: [f64; 17] = [
    0.015625, 0.03125, 0.0625, 0.125, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0,
    6.0, 8.0,
];
/// Multiples of S every system runs (the comparison rates).
pub const COMPARISON: [f64; 3] = [0.25, 0.5, 0.75];

/// A `--ladder-max` the ladder would not honour: not one of its rungs
/// from the highest comparison multiple (0.75) up.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "--ladder-max {got}: the ladder climbs in fixed steps, so its top must be one of {}",
    ladder_tops().map(|f| f.to_string()).collect::<Vec<_>>().join(", ")
)]
pub struct LadderMaxError {
    /// The value given.
    pub got: f64,
}

/// The multiples of S the ladder may end at: its rungs from the highest
/// comparison multiple up (every system runs the comparison rates).
pub fn ladder_tops() -> impl Iterator<Item = f64> {
    LADDER
        .into_iter()
        .filter(|&f| f >= COMPARISON[COMPARISON.len() - 1])
}

/// Checks `--ladder-max`: a value between two rungs would be recorded as
/// given but run as the rung below it, so only rungs are taken.
pub fn check_ladder_max(max: f64) -> Result<f64, LadderMaxError> {
    ladder_tops()
        .find(|&f| f == max)
        .ok_or(LadderMaxError { got: max })
}

/// A rate as the integer requests/s every system is offered (at least 1).
pub fn integer_rate(rate: f64) -> f64 {
    rate.round().max(1.0)
}

/// When a run counts as keeping up with its rate: nothing failed, the
/// achieved throughput is within `min_achieved` of the offered rate, and
/// the median latency from the intended send time stays under `max_p50`.
///
/// The median, not a tail: past saturation an open-loop queue grows for
/// the whole window, so the median climbs to a sizeable fraction of the
/// window (tens of ms and more), while a host that steals the CPU for a
/// few ms now and then — a shared VM — moves p99 past any tight bound at
/// rates far below saturation, and would make the search find noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeepUp {
    /// Least fraction of the offered rate that must be achieved.
    pub min_achieved: f64,
    /// Highest acceptable p50.
    pub max_p50: Duration,
}

impl KeepUp {
    /// The verdict on one run's numbers.
    pub fn kept_up(&self, rate: f64, achieved: f64, p50: Duration, errors: u64) -> bool {
        errors == 0 && achieved >= self.min_achieved * rate && p50 <= self.max_p50
    }
}

/// Why no saturation rate was found.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SearchError {
    /// Bad bounds.
    #[error("saturation search: need 0 < start <= max (start {start}, max {max})")]
    BadBounds {
        /// First rate.
        start: f64,
        /// Highest rate.
        max: f64,
    },
    /// Even the lowest rate tried was missed.
    #[error("rpc-hyper kept up with no rate, down to {lowest}/s: the machine is too busy or the server broken")]
    NeverKeptUp {
        /// The lowest rate tried.
        lowest: f64,
    },
    /// The search was asked for its answer before it finished.
    #[error("saturation search not finished")]
    Unfinished,
}

/// How the saturation search ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Saturation {
    /// The highest rate kept up with, below the lowest rate missed.
    Found {
        /// S.
        rate: f64,
        /// The lowest rate missed.
        missed: f64,
    },
    /// Every rate up to the search's cap was kept up with: S is the cap
    /// (the client, not the server, may be the limit there).
    Capped {
        /// S (the cap).
        rate: f64,
    },
}

impl Saturation {
    /// S.
    pub fn rate(&self) -> f64 {
        match *self {
            Saturation::Found { rate, .. } | Saturation::Capped { rate } => rate,
        }
    }
}

/// The coarse search for the saturation rate: from `start`, double while
/// rates are kept up with (up to `max`); below the first missed rate,
/// halve until one is kept up with; then bisect between the highest rate
/// kept up with and the lowest missed `refine` times.
///
/// A miss is believed only after `miss_runs` runs of that rate all missed
/// (see [`with_miss_runs`](Self::with_miss_runs)): on a shared host one
/// stall can sink a whole window, and an unconfirmed miss low in the
/// search would drag S down by halves. A noisy verdict that contradicts an
/// earlier one (a confirmed miss below a rate kept up with) is believed:
/// the bracket moves down.
#[derive(Debug, Clone, PartialEq)]
pub struct SaturationSearch {
    start: f64,
    max: f64,
    refine: u32,
    miss_runs: u32,
    runs: Vec<(f64, bool)>,
    refined: u32,
}

impl SaturationSearch {
    /// Rates are made integers (at least 1); `0 < start <= max`. One run
    /// per rate until [`with_miss_runs`](Self::with_miss_runs) says more.
    pub fn new(start: f64, max: f64, refine: u32) -> Result<Self, SearchError> {
        if !(start.is_finite() && max.is_finite()) || start <= 0.0 || start > max {
            return Err(SearchError::BadBounds { start, max });
        }
        let (start, max) = (integer_rate(start), integer_rate(max));
        Ok(Self {
            start,
            max,
            refine,
            miss_runs: 1,
            runs: Vec::new(),
            refined: 0,
        })
    }

    /// A rate counts as missed only after `runs` runs of it all missed
    /// (at least 1); one run that keeps up settles it as kept up.
    pub fn with_miss_runs(mut self, runs: u32) -> Self {
        self.miss_runs = runs.max(1);
        self
    }

    /// Every run, in order, with its verdict.
    pub fn runs(&self) -> &[(f64, bool)] {
        &self.runs
    }

    /// The settled verdict on `rate`: kept up once, or missed `miss_runs`
    /// times; `None` while untried or unconfirmed.
    fn verdict(&self, rate: f64) -> Option<bool> {
        let mut misses = 0;
        for &(r, kept_up) in &self.runs {
            if r == rate {
                if kept_up {
                    return Some(true);
                }
                misses += 1;
            }
        }
        (misses >= self.miss_runs).then_some(false)
    }

    /// (highest kept up with below the lowest missed, lowest missed),
    /// over settled verdicts.
    fn bracket(&self) -> (Option<f64>, Option<f64>) {
        let settled: Vec<(f64, bool)> = self
            .runs
            .iter()
            .filter_map(|&(r, _)| self.verdict(r).map(|v| (r, v)))
            .collect();
        let bad = settled
            .iter()
            .filter(|t| !t.1)
            .map(|t| t.0)
            .min_by(f64::total_cmp);
        let good = settled
            .iter()
            .filter(|t| t.1 && bad.is_none_or(|b| t.0 < b))
            .map(|t| t.0)
            .max_by(f64::total_cmp);
        (good, bad)
    }

    /// The next rate to run, or `None` when the search is over.
    pub fn next_rate(&self) -> Option<f64> {
        // A miss waiting for its confirmation goes first.
        if let Some(&(rate, _)) = self
            .runs
            .iter()
            .rev()
            .find(|&&(r, _)| self.verdict(r).is_none())
        {
            return Some(rate);
        }
        let untried = |r: f64| (!self.runs.iter().any(|t| t.0 == r)).then_some(r);
        match self.bracket() {
            (None, None) => Some(self.start),
            (Some(good), None) => {
                if good >= self.max {
                    None
                } else {
                    untried(integer_rate(good * 2.0).min(self.max))
                }
            }
            (None, Some(bad)) => {
                if bad <= 1.0 {
                    None
                } else {
                    untried(integer_rate(bad / 2.0))
                }
            }
            (Some(good), Some(bad)) => {
                let mid = integer_rate((good + bad) / 2.0);
                if self.refined >= self.refine || mid <= good || mid >= bad {
                    None
                } else {
                    untried(mid)
                }
            }
        }
    }

    /// Records the verdict of one run at `rate`.
    pub fn record(&mut self, rate: f64, kept_up: bool) {
        let bracketed = matches!(self.bracket(), (Some(_), Some(_)));
        let settled_before = self.verdict(rate).is_some();
        self.runs.push((rate, kept_up));
        if bracketed && !settled_before && self.verdict(rate).is_some() {
            self.refined += 1;
        }
    }

    /// The answer, once [`next_rate`](Self::next_rate) is `None`.
    pub fn saturation(&self) -> Result<Saturation, SearchError> {
        if self.next_rate().is_some() {
            return Err(SearchError::Unfinished);
        }
        match self.bracket() {
            (Some(rate), Some(missed)) => Ok(Saturation::Found { rate, missed }),
            (Some(rate), None) => Ok(Saturation::Capped { rate }),
            (None, _) => Err(SearchError::NeverKeptUp {
                lowest: self
                    .runs
                    .iter()
                    .map(|t| t.0)
                    .min_by(f64::total_cmp)
                    .unwrap_or(self.start),
            }),
        }
    }
}

/// One system's walk over the rate ladder: the comparison rates (0.25,
/// 0.5, 0.75 × S) always; above them, higher multiples of S while every
/// rate so far met the objective; below them, if the lowest comparison
/// rate missed, lower multiples until one meets it. The highest rate
/// meeting the objective is the last one met before the first miss.
#[derive(Debug, Clone, PartialEq)]
pub struct SloLadder {
    /// Distinct integer rates, ascending.
    rates: Vec<f64>,
    /// Indices of the comparison rates in `rates`, ascending.
    comparison: Vec<usize>,
    /// The verdict on each rate run.
    met: Vec<Option<bool>>,
}

impl SloLadder {
    /// The ladder for saturation rate `s`, up to `max_multiple` × S (never
    /// below the comparison rates).
    pub fn new(s: f64, max_multiple: f64) -> Self {
        let top = max_multiple.max(COMPARISON[COMPARISON.len() - 1]);
        let mut rates: Vec<f64> = LADDER
            .iter()
            .filter(|&&f| f <= top)
            .map(|&f| integer_rate(f * s))
            .collect();
        rates.dedup();
        let comparison: Vec<usize> = COMPARISON
            .iter()
            .map(|&f| {
                let r = integer_rate(f * s);
                rates
                    .iter()
                    .position(|&x| x == r)
                    .expect("every comparison multiple is on the ladder")
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let met = vec![None; rates.len()];
        Self {
            rates,
            comparison,
            met,
        }
    }

    /// The comparison rates (identical for every system), ascending.
    pub fn comparison_rates(&self) -> Vec<f64> {
        self.comparison.iter().map(|&i| self.rates[i]).collect()
    }

    /// The next rate to run, or `None` when this system is done.
    pub fn next_rate(&self) -> Option<f64> {
        if let Some(&i) = self.comparison.iter().find(|&&i| self.met[i].is_none()) {
            return Some(self.rates[i]);
        }
        let low = self.comparison[0];
        let high = *self.comparison.last().expect("three comparison rates");
        if self.met[low] == Some(true) {
            // Up, while every rate from the lowest comparison rate met it.
            let mut i = low;
            while i < self.rates.len() && self.met[i].is_some() {
                if self.met[i] == Some(false) {
                    return None;
                }
                i += 1;
            }
            return (i < self.rates.len() && i > high).then(|| self.rates[i]);
        }
        // Down, while every rate tried below missed.
        let mut i = low;
        while i > 0 {
            i -= 1;
            match self.met[i] {
                None => return Some(self.rates[i]),
                Some(true) => return None,
                Some(false) => {}
            }
        }
        None
    }

    /// Records whether `rate` met the objective (a rate not on the ladder
    /// is ignored).
    pub fn record(&mut self, rate: f64, met: bool) {
        if let Some(i) = self.rates.iter().position(|&r| r == rate) {
            self.met[i] = Some(met);
        }
    }

    /// The highest rate meeting the objective (see the type's doc).
    pub fn best(&self) -> Option<f64> {
        let low = self.comparison[0];
        if self.met[low] == Some(true) {
            let mut best = low;
            while best + 1 < self.rates.len() && self.met[best + 1] == Some(true) {
                best += 1;
            }
            return Some(self.rates[best]);
        }
        (0..low)
            .rev()
            .find(|&i| self.met[i] == Some(true))
            .map(|i| self.rates[i])
    }

    /// Whether the walk stopped at the top of the ladder with every rate
    /// met (the true highest rate is above it).
    pub fn reached_top(&self) -> bool {
        self.met.last() == Some(&Some(true)) && self.best() == self.rates.last().copied()
    }
}

/// Which of a rate's `--repeat` windows stands for the rate: the one with
/// the median p99 (for an even count the lower middle, the
/// `(N - 1) / 2`-th by p99), as an index into `p99s`, which are in run
/// order. Equal p99s keep their run order (a stable sort), so a tie is
/// settled the same way every time. `None` for no windows.
///
/// One measured window stands for the rate, never numbers merged from
/// several: a merged histogram would let one window's stall set the tail
/// again, and an average of percentiles is a number no window measured.
pub fn median_window<T: Ord>(p99s: &[T]) -> Option<usize> {
    let mut by_p99: Vec<usize> = (0..p99s.len()).collect();
    by_p99.sort_by_key(|&i| &p99s[i]);
    let middle = p99s.len().checked_sub(1)? / 2;
    Some(by_p99[middle])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against a server that keeps up exactly below `capacity`.
    fn search(start: f64, max: f64, refine: u32, capacity: f64) -> (SaturationSearch, Vec<f64>) {
        let mut s = SaturationSearch::new(start, max, refine).unwrap();
        let mut order = Vec::new();
        while let Some(rate) = s.next_rate() {
            assert!(order.len() < 64, "the search does not end: {order:?}");
            assert_eq!(rate, rate.round(), "rates are integers");
            order.push(rate);
            s.record(rate, rate < capacity);
        }
        (s, order)
    }

    #[test]
    fn doubles_then_bisects() {
        let (s, order) = search(1000.0, 1e6, 3, 10_000.0);
        assert_eq!(
            order,
            vec![1000.0, 2000.0, 4000.0, 8000.0, 16000.0, 12000.0, 10000.0, 9000.0]
        );
        assert_eq!(
            s.saturation().unwrap(),
            Saturation::Found {
                rate: 9000.0,
                missed: 10000.0
            }
        );
    }

    #[test]
    fn without_refinement_it_is_the_last_doubling() {
        let (s, order) = search(1000.0, 1e6, 0, 10_000.0);
        assert_eq!(order, vec![1000.0, 2000.0, 4000.0, 8000.0, 16000.0]);
        assert_eq!(s.saturation().unwrap().rate(), 8000.0);
    }

    #[test]
    fn halves_when_the_start_is_too_high() {
        let (s, order) = search(8000.0, 1e6, 1, 1500.0);
        assert_eq!(order, vec![8000.0, 4000.0, 2000.0, 1000.0, 1500.0]);
        assert_eq!(
            s.saturation().unwrap(),
            Saturation::Found {
                rate: 1000.0,
                missed: 1500.0
            }
        );
    }

    #[test]
    fn stops_at_the_cap() {
        let (s, order) = search(1000.0, 5000.0, 3, f64::INFINITY);
        assert_eq!(order, vec![1000.0, 2000.0, 4000.0, 5000.0]);
        assert_eq!(s.saturation().unwrap(), Saturation::Capped { rate: 5000.0 });
    }

    #[test]
    fn a_dead_server_is_an_error() {
        let (s, order) = search(4.0, 100.0, 3, 0.0);
        assert_eq!(order, vec![4.0, 2.0, 1.0]);
        assert_eq!(
            s.saturation(),
            Err(SearchError::NeverKeptUp { lowest: 1.0 })
        );
    }

    #[test]
    fn bisection_ends_when_the_bracket_closes() {
        // Capacity between two adjacent integers: the bracket [2, 3) closes.
        let (s, _) = search(1.0, 100.0, 50, 2.5);
        assert_eq!(
            s.saturation().unwrap(),
            Saturation::Found {
                rate: 2.0,
                missed: 3.0
            }
        );
    }

    #[test]
    fn a_noisy_miss_below_a_good_rate_moves_the_bracket_down() {
        let mut s = SaturationSearch::new(1000.0, 1e6, 2).unwrap();
        s.record(1000.0, true);
        s.record(2000.0, true);
        s.record(4000.0, false);
        assert_eq!(s.next_rate(), Some(3000.0));
        s.record(3000.0, false);
        assert_eq!(s.next_rate(), Some(2500.0));
        s.record(2500.0, true);
        assert_eq!(s.next_rate(), None, "two refinement steps taken");
        assert_eq!(s.saturation().unwrap().rate(), 2500.0);
        let mut s = SaturationSearch::new(1000.0, 1e6, 5).unwrap();
        s.record(1000.0, true);
        s.record(2000.0, false);
        s.record(1500.0, true);
        // Then a miss below the best so far: 1000 is the best below it.
        s.record(1200.0, false);
        assert_eq!(s.next_rate(), Some(1100.0));
        assert!(matches!(s.saturation(), Err(SearchError::Unfinished)));
    }

    #[test]
    fn a_miss_counts_once_confirmed() {
        let mut s = SaturationSearch::new(1000.0, 1e6, 1)
            .unwrap()
            .with_miss_runs(2);
        s.record(1000.0, true);
        assert_eq!(s.next_rate(), Some(2000.0));
        // A stall sinks 2000's first window: it is run again, and keeps up.
        s.record(2000.0, false);
        assert_eq!(s.next_rate(), Some(2000.0));
        s.record(2000.0, true);
        assert_eq!(s.next_rate(), Some(4000.0));
        // 4000 misses twice: confirmed; bisect once (3000, kept up).
        s.record(4000.0, false);
        assert_eq!(s.next_rate(), Some(4000.0));
        s.record(4000.0, false);
        assert_eq!(s.next_rate(), Some(3000.0));
        s.record(3000.0, true);
        assert_eq!(s.next_rate(), None);
        assert_eq!(
            s.saturation().unwrap(),
            Saturation::Found {
                rate: 3000.0,
                missed: 4000.0
            }
        );
        assert_eq!(s.runs().len(), 6);
        // A refinement rate's confirmation is part of the same step.
        let mut s = SaturationSearch::new(1000.0, 1e6, 1)
            .unwrap()
            .with_miss_runs(2);
        for (rate, kept_up) in [(1000.0, true), (2000.0, false), (2000.0, false)] {
            s.record(rate, kept_up);
        }
        assert_eq!(s.next_rate(), Some(1500.0));
        s.record(1500.0, false);
        assert_eq!(s.next_rate(), Some(1500.0), "confirming, not a new step");
        s.record(1500.0, false);
        assert_eq!(s.next_rate(), None);
        assert_eq!(s.saturation().unwrap().rate(), 1000.0);
    }

    #[test]
    fn bad_bounds_are_refused() {
        assert!(SaturationSearch::new(10.0, 5.0, 1).is_err());
        assert!(SaturationSearch::new(f64::NAN, 5.0, 1).is_err());
        assert!(SaturationSearch::new(-1.0, 5.0, 1).is_err());
        // Rounded to integers, at least 1.
        let s = SaturationSearch::new(0.2, 0.4, 1).unwrap();
        assert_eq!(s.next_rate(), Some(1.0));
    }

    #[test]
    fn keep_up_needs_rate_median_latency_and_no_errors() {
        let k = KeepUp {
            min_achieved: 0.95,
            max_p50: Duration::from_millis(2),
        };
        let ms = Duration::from_millis;
        assert!(k.kept_up(1000.0, 990.0, ms(1), 0));
        assert!(k.kept_up(1000.0, 990.0, ms(2), 0));
        assert!(!k.kept_up(1000.0, 900.0, ms(1), 0));
        assert!(!k.kept_up(1000.0, 1000.0, ms(3), 0));
        assert!(!k.kept_up(1000.0, 1000.0, ms(1), 1));
    }

    /// Walks a ladder against a system that meets the objective exactly
    /// at rates up to `limit`.
    fn walk(s: f64, max_multiple: f64, limit: f64) -> (SloLadder, Vec<f64>) {
        let mut ladder = SloLadder::new(s, max_multiple);
        let mut order = Vec::new();
        while let Some(rate) = ladder.next_rate() {
            assert!(order.len() < 64);
            order.push(rate);
            ladder.record(rate, rate <= limit);
        }
        (ladder, order)
    }

    #[test]
    fn the_ladder_climbs_while_met() {
        let (l, order) = walk(1000.0, 8.0, 2600.0);
        assert_eq!(l.comparison_rates(), vec![250.0, 500.0, 750.0]);
        assert_eq!(
            order,
            vec![250.0, 500.0, 750.0, 1000.0, 1250.0, 1500.0, 2000.0, 2500.0, 3000.0]
        );
        assert_eq!(l.best(), Some(2500.0));
        assert!(!l.reached_top());
        let (l, order) = walk(1000.0, 2.0, f64::INFINITY);
        assert_eq!(order.last(), Some(&2000.0));
        assert_eq!(l.best(), Some(2000.0));
        assert!(l.reached_top());
    }

    #[test]
    fn the_ladder_runs_every_comparison_rate_even_after_a_miss() {
        let (l, order) = walk(1000.0, 8.0, 600.0);
        assert_eq!(order, vec![250.0, 500.0, 750.0]);
        assert_eq!(l.best(), Some(500.0));
        // A miss at 500 but a meet at 750 (noise): the first miss decides.
        let mut l = SloLadder::new(1000.0, 8.0);
        l.record(250.0, true);
        l.record(500.0, false);
        l.record(750.0, true);
        assert_eq!(l.next_rate(), None);
        assert_eq!(l.best(), Some(250.0));
    }

    #[test]
    fn the_ladder_descends_when_the_lowest_comparison_rate_misses() {
        let (l, order) = walk(1000.0, 8.0, 100.0);
        assert_eq!(order, vec![250.0, 500.0, 750.0, 125.0, 63.0]);
        assert_eq!(l.best(), Some(63.0));
        let (l, order) = walk(1000.0, 8.0, 0.0);
        assert_eq!(order, vec![250.0, 500.0, 750.0, 125.0, 63.0, 31.0, 16.0]);
        assert_eq!(l.best(), None);
    }

    #[test]
    fn the_ladder_max_must_be_a_rung_it_ends_on() {
        for top in [0.75, 1.0, 2.5, 8.0] {
            assert_eq!(check_ladder_max(top), Ok(top));
            // The walk that never misses ends exactly there.
            let (l, order) = walk(1000.0, top, f64::INFINITY);
            assert_eq!(order.last(), Some(&(top * 1000.0)), "{top}");
            assert!(l.reached_top());
        }
        for bad in [0.5, 0.0, -1.0, 3.3, 9.0, f64::NAN, f64::INFINITY] {
            let err = check_ladder_max(bad).unwrap_err();
            assert!(err.to_string().contains("0.75, 1, 1.25"), "{bad}: {err}");
        }
    }

    #[test]
    fn tiny_saturation_rates_collapse_to_distinct_integers() {
        let l = SloLadder::new(2.0, 8.0);
        assert_eq!(l.comparison_rates(), vec![1.0, 2.0]);
        let (l, order) = walk(2.0, 8.0, f64::INFINITY);
        let mut sorted = order.clone();
        sorted.sort_by(f64::total_cmp);
        sorted.dedup();
        assert_eq!(sorted.len(), order.len(), "no rate runs twice: {order:?}");
        assert_eq!(l.best(), Some(16.0));
        // Ignored: not on the ladder.
        let mut l = SloLadder::new(1000.0, 8.0);
        l.record(333.0, true);
        assert_eq!(l.next_rate(), Some(250.0));
    }

    #[test]
    fn the_window_with_the_median_p99_stands_for_the_rate() {
        // Odd: the middle p99, wherever it ran.
        assert_eq!(median_window(&[1495, 285, 363]), Some(2));
        assert_eq!(median_window(&[363, 1495, 285]), Some(0));
        // Even: the lower middle, never a blend of the two.
        assert_eq!(median_window(&[400, 100, 300, 200]), Some(3));
        assert_eq!(median_window(&[900, 100]), Some(1));
        // One window is its own median.
        assert_eq!(median_window(&[7]), Some(0));
        // Ties keep their run order: the earlier of equal p99s.
        assert_eq!(median_window(&[5, 5, 5]), Some(1));
        assert_eq!(median_window(&[7, 3, 7]), Some(0));
        assert_eq!(median_window(&[3, 7, 7, 3]), Some(3));
        // No windows, nothing to choose.
        assert_eq!(median_window::<u64>(&[]), None);
        // Whatever the order, the chosen p99 is the sorted middle.
        for p99s in [[1u64, 2, 3, 4, 5], [5, 4, 3, 2, 1], [2, 5, 1, 4, 3]] {
            assert_eq!(p99s[median_window(&p99s).unwrap()], 3, "{p99s:?}");
        }
    }
}
