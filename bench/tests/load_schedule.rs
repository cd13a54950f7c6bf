//! The arrival schedule, checked exactly against a fake clock: fixed
//! arrivals land on their exact nanoseconds (also split over threads),
//! Poisson arrivals have the right rate and gap distribution for a seed,
//! and the mix picks kinds in proportion to their weights.

use std::time::Duration;

use nocturne_bench::load::{Arrival, ArrivalSchedule, KindPicker};

/// A fake clock driving a schedule the way a client thread does: at each
/// tick, every arrival whose intended time has come is released.
struct FakeClock {
    now_ns: u64,
    schedule: ArrivalSchedule,
    next_ns: u64,
}

impl FakeClock {
    fn new(mut schedule: ArrivalSchedule) -> Self {
        let next_ns = schedule.next_ns();
        Self {
            now_ns: 0,
            schedule,
            next_ns,
        }
    }

    /// Advances the clock by `step` and returns the intended times released.
    fn tick(&mut self, step: Duration) -> Vec<u64> {
        self.now_ns += step.as_nanos() as u64;
        let mut due = Vec::new();
        while self.next_ns <= self.now_ns {
            due.push(self.next_ns);
            self.next_ns = self.schedule.next_ns();
        }
        due
    }
}

#[test]
fn fixed_arrivals_are_exact() {
    let mut s = ArrivalSchedule::new(Arrival::Fixed, 1000.0, 0);
    for k in 0..10_000u64 {
        assert_eq!(s.next(), Duration::from_millis(k));
    }
    // A rate that does not divide a second: every time rounds to the
    // nearest nanosecond of k/3 s, without drift.
    let mut s = ArrivalSchedule::new(Arrival::Fixed, 3.0, 0);
    for k in 0..3_000u64 {
        let exact = (k as f64 * 1e9 / 3.0).round() as u64;
        assert_eq!(s.next_ns(), exact, "arrival {k}");
    }
    let mut s = ArrivalSchedule::new(Arrival::Fixed, 3.0, 0);
    for _ in 0..3_000 {
        s.next_ns();
    }
    assert_eq!(
        s.next_ns(),
        1_000_000_000_000,
        "arrival 3000 is exactly at 1000 s"
    );
}

#[test]
fn fixed_arrivals_released_by_a_fake_clock() {
    // 10k/s in ticks of 250 µs: 0 is due at the first tick with the next
    // two (0, 100, 200 µs), then 2 or 3 per tick, never early, never lost.
    let mut clock = FakeClock::new(ArrivalSchedule::new(Arrival::Fixed, 10_000.0, 0));
    let mut released = Vec::new();
    for tick in 1..=4_000u64 {
        let due = clock.tick(Duration::from_micros(250));
        for &t in &due {
            assert!(t <= clock.now_ns, "released before its time");
            assert!(t + 250_000 >= clock.now_ns, "released a tick late");
        }
        released.extend(due);
        // Arrivals at 0, 100 µs, …, up to and including now.
        let now_us = tick * 250;
        assert_eq!(released.len() as u64, now_us / 100 + 1, "after tick {tick}");
    }
    for (k, &t) in released.iter().enumerate() {
        assert_eq!(t, k as u64 * 100_000);
    }
}

#[test]
fn threads_interleave_into_one_even_stream() {
    let threads = 4;
    let mut merged: Vec<u64> = (0..threads)
        .flat_map(|i| {
            let mut s = ArrivalSchedule::for_thread(Arrival::Fixed, 8_000.0, i, threads, 9);
            (0..1_000).map(move |_| s.next_ns())
        })
        .collect();
    merged.sort_unstable();
    for (k, &t) in merged.iter().enumerate() {
        assert_eq!(t, k as u64 * 125_000, "arrival {k} of the merged stream");
    }
    // Each thread alone runs at a quarter of the rate, offset by its index.
    let mut s = ArrivalSchedule::for_thread(Arrival::Fixed, 8_000.0, 3, threads, 9);
    assert_eq!(s.next_ns(), 375_000);
    assert_eq!(s.next_ns(), 375_000 + 500_000);
}

#[test]
fn poisson_arrivals_have_the_rate_and_shape() {
    let rate = 10_000.0;
    let mean_gap = 1e9 / rate;
    let mut s = ArrivalSchedule::new(Arrival::Poisson, rate, 42);
    let n = 200_000;
    let mut last = 0u64;
    let mut gaps = Vec::with_capacity(n);
    for _ in 0..n {
        let t = s.next_ns();
        assert!(t >= last, "times never go back");
        gaps.push((t - last) as f64);
        last = t;
    }
    let mean = gaps.iter().sum::<f64>() / n as f64;
    let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n as f64;
    // Standard error of the mean is mean/sqrt(n) ≈ 0.22 %: 1 % is > 4 sigma.
    assert!((mean / mean_gap - 1.0).abs() < 0.01, "mean gap {mean} ns");
    // Exponential gaps: standard deviation equals the mean.
    assert!(
        (var.sqrt() / mean - 1.0).abs() < 0.02,
        "cv {}",
        var.sqrt() / mean
    );
    // P(gap > mean) = 1/e.
    let above = gaps.iter().filter(|&&g| g > mean_gap).count() as f64 / n as f64;
    assert!(
        (above - (-1f64).exp()).abs() < 0.005,
        "P(gap > mean) = {above}"
    );
    // The number of arrivals in 10 s is 100k ± a few hundred.
    let mut s = ArrivalSchedule::new(Arrival::Poisson, rate, 42);
    let in_window = std::iter::from_fn(|| Some(s.next_ns()))
        .take_while(|&t| t < 10_000_000_000)
        .count() as f64;
    assert!(
        (in_window / 100_000.0 - 1.0).abs() < 0.01,
        "{in_window} arrivals in 10 s"
    );
}

#[test]
fn poisson_streams_are_reproducible_and_independent() {
    let take = |seed, thread| {
        let mut s = ArrivalSchedule::for_thread(Arrival::Poisson, 1_000.0, thread, 2, seed);
        (0..100).map(|_| s.next_ns()).collect::<Vec<_>>()
    };
    assert_eq!(take(7, 0), take(7, 0));
    assert_ne!(take(7, 0), take(8, 0));
    assert_ne!(take(7, 0), take(7, 1));
    // Two threads at half the rate each make up the whole rate.
    let merged = (0..2)
        .map(|i| {
            let mut s = ArrivalSchedule::for_thread(Arrival::Poisson, 20_000.0, i, 2, 3);
            std::iter::from_fn(move || Some(s.next_ns()))
                .take_while(|&t| t < 5_000_000_000)
                .count()
        })
        .sum::<usize>() as f64;
    assert!((merged / 100_000.0 - 1.0).abs() < 0.015, "{merged}");
}

#[test]
fn mix_weights_are_honoured() {
    let mut p = KindPicker::new(&[3, 1], 5);
    let n = 100_000;
    let first = (0..n).filter(|_| p.pick() == 0).count() as f64 / n as f64;
    assert!(
        (first - 0.75).abs() < 0.01,
        "share of the weight-3 kind: {first}"
    );
    let picks = |seed| {
        let mut p = KindPicker::new(&[1, 1, 1], seed);
        (0..50).map(|_| p.pick()).collect::<Vec<_>>()
    };
    assert_eq!(picks(1), picks(1));
    assert_ne!(picks(1), picks(2));
    let mut single = KindPicker::new(&[4], 0);
    assert!((0..100).all(|_| single.pick() == 0));
}
