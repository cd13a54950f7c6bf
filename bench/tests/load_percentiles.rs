//! Percentile math against distributions whose percentiles are known in
//! closed form: exponential and uniform latencies, the wrk2 stall model,
//! merged per-thread histograms, objectives at their boundaries, and the
//! outputs (table, report cases, `.hgrm`) computed from them.

use std::collections::BTreeMap;
use std::time::Duration;

use nocturne_bench::hist::LatencyHistogram;
use nocturne_bench::load::output;
use nocturne_bench::load::schedule::Rng;
use nocturne_bench::load::{RateResult, Slo, SocketErrors};

fn rel_err(actual: f64, expected: f64) -> f64 {
    (actual - expected).abs() / expected
}

#[test]
fn exponential_latencies() {
    // Service times ~ Exp(mean 50 µs): the q-quantile is -ln(1-q) * 50 µs.
    let mean_ns = 50_000.0;
    let mut rng = Rng::new(11);
    let mut h = LatencyHistogram::new();
    let n = 1_000_000;
    for _ in 0..n {
        h.record_ns((-rng.next_open01().ln() * mean_ns) as u64);
    }
    for (q, tolerance) in [(0.5, 0.01), (0.9, 0.01), (0.99, 0.02), (0.999, 0.05)] {
        let expected = -(1.0f64 - q).ln() * mean_ns;
        let got = h.quantile_ns(q) as f64;
        assert!(
            rel_err(got, expected) < tolerance,
            "p{}: {got} ns, expected {expected} ns",
            q * 100.0
        );
    }
    let s = h.summary();
    assert!(rel_err(s.mean_us, 50.0) < 0.01, "mean {}", s.mean_us);
}

#[test]
fn uniform_latencies() {
    let mut rng = Rng::new(3);
    let mut h = LatencyHistogram::new();
    for _ in 0..500_000 {
        // Uniform on [10 µs, 110 µs).
        h.record_ns(10_000 + (rng.next_u64() % 100_000));
    }
    for q in [0.1, 0.5, 0.9, 0.99, 0.999] {
        let expected = 10_000.0 + q * 100_000.0;
        let got = h.quantile_ns(q) as f64;
        assert!(rel_err(got, expected) < 0.01, "q {q}: {got} vs {expected}");
    }
    assert!(h.max_ns() >= 109_000 && h.max_ns() <= 110_100);
}

/// Latencies of an open-loop run at `rate` for `seconds`, against a server
/// that answers in `service_ns` but stalls everything for `stall_ns` from
/// `stall_at_ns`: each request's latency from its intended time.
fn stall_model(
    rate: f64,
    seconds: f64,
    service_ns: u64,
    stall_at_ns: u64,
    stall_ns: u64,
) -> LatencyHistogram {
    let mut h = LatencyHistogram::new();
    let n = (rate * seconds) as u64;
    for k in 0..n {
        let intended = (k as f64 * 1e9 / rate) as u64;
        let start = if (stall_at_ns..stall_at_ns + stall_ns).contains(&intended) {
            stall_at_ns + stall_ns
        } else {
            intended
        };
        h.record_ns(start + service_ns - intended);
    }
    h
}

#[test]
fn the_wrk2_stall_shape() {
    // 1000/s for 10 s, a 1 s stall: 10 % of the requests wait between 1 s
    // and 0 for the stall's end, uniformly; the rest take the service time.
    // The q-quantile for q > 0.9 is (q - 0.9) / 0.1 * 1 s (+ service).
    let service = 20_000;
    let h = stall_model(1_000.0, 10.0, service, 3_000_000_000, 1_000_000_000);
    assert_eq!(h.len(), 10_000);
    // HdrHistogram reports a bucket's highest equivalent value: 3
    // significant digits, so within 0.1 % above the recorded value.
    assert!(rel_err(h.quantile_ns(0.5) as f64, service as f64) <= 0.001);
    assert!(h.quantile_ns(0.89) < 25_000);
    for (q, expected_ms) in [(0.95, 500.0), (0.99, 900.0), (0.999, 990.0)] {
        let got_ms = h.quantile_ns(q) as f64 / 1e6;
        assert!(
            (got_ms - expected_ms).abs() <= expected_ms * 0.002 + 1.1,
            "q {q}: {got_ms} ms, expected {expected_ms} ms"
        );
    }
    assert!(rel_err(h.max_ns() as f64, 1_000_020_000.0) < 0.001);
    // Objectives read the same numbers.
    let p99 = Slo::parse_list("p99=950ms").unwrap()[0];
    let p999 = Slo::parse_list("p99.9=950ms").unwrap()[0];
    assert!(p99.is_met_by(&h));
    assert!(!p999.is_met_by(&h));
}

#[test]
fn merging_threads_equals_one_histogram() {
    let mut rng = Rng::new(1);
    let values: Vec<u64> = (0..100_000)
        .map(|_| 1_000 + rng.next_u64() % 1_000_000)
        .collect();
    let mut one = LatencyHistogram::new();
    let mut parts = vec![LatencyHistogram::new(); 4];
    for (i, &v) in values.iter().enumerate() {
        one.record_ns(v);
        parts[i % 4].record_ns(v);
    }
    let mut merged = LatencyHistogram::new();
    for p in &parts {
        merged.merge(p);
    }
    assert_eq!(merged.len(), one.len());
    for q in [0.0, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0] {
        assert_eq!(merged.quantile_ns(q), one.quantile_ns(q), "q {q}");
    }
}

#[test]
fn objectives_at_their_boundaries() {
    let mut h = LatencyHistogram::new();
    h.record_ns_n(100_000, 99); // 100 µs
    h.record_ns_n(2_000_000, 1); // 2 ms
    let met = |text: &str| {
        Slo::parse_list(text)
            .unwrap()
            .iter()
            .all(|s| s.is_met_by(&h))
    };
    // Percentiles read back as their bucket's upper edge (3 significant
    // digits): 100 µs is reported as at most 100.1 µs, never below 100 µs.
    assert!(met("p99=100.1us"));
    assert!(!met("p99=99.9us"));
    assert!(met("max=2.002ms"));
    assert!(!met("max=1.999ms"));
    assert!(met("p50=100.1us,p99=100.1us"));
    assert!(!met("p50=100.1us,p99.9=1ms"));
}

fn result_with(latency: LatencyHistogram, service: LatencyHistogram) -> RateResult {
    RateResult {
        rate: 1_000.0,
        window: Duration::from_secs(2),
        offered: 2_000,
        sent: 1_990,
        completed: 1_980,
        unsent: 10,
        timeouts: 5,
        non_2xx: 3,
        socket_errors: SocketErrors {
            connect: 1,
            closed: 5,
            ..SocketErrors::default()
        },
        statuses: BTreeMap::from([(200, 1_977), (503, 3)]),
        responses_in_window: 1_900,
        latency,
        service,
        send_lag: LatencyHistogram::new(),
        per_kind: Vec::new(),
        reconnects: 2,
        client_cpu: Duration::from_millis(20),
        requests_total: 2_000,
        first_error: Some("127.0.0.1:1: the server closed the connection".into()),
        allow_non_2xx: false,
    }
}

#[test]
fn outputs_carry_the_percentiles_and_counters() {
    let latency = stall_model(1_000.0, 2.0, 50_000, 500_000_000, 100_000_000);
    let mut service = LatencyHistogram::new();
    service.record_ns_n(50_000, 2_000);
    let r = result_with(latency.clone(), service);
    assert_eq!(r.errors(), 3 + 6 + 5);
    assert_eq!(r.offered_per_s(), 1_000.0);
    assert_eq!(r.achieved_per_s(), 950.0);
    assert!((r.client_cpu_us_per_request() - 10.0).abs() < 1e-9);
    assert!(
        !r.meets(&[]),
        "a rate with errors never meets the objectives"
    );

    let cases = output::cases(&r, &Slo::parse_list("p99=1ms").unwrap());
    assert_eq!(cases.len(), 1);
    let c = &cases[0];
    assert_eq!(c.name, "1k/s");
    assert_eq!(c.samples, 2_000);
    assert_eq!(c.errors, 14);
    assert_eq!(c.ops_per_s, 950.0);
    assert!((c.p99_us - latency.quantile_ns(0.99) as f64 / 1e3).abs() < 1e-9);
    assert_eq!(c.extra["offered_per_s"], 1_000.0);
    assert_eq!(c.counts["unsent"], 10);
    assert_eq!(c.flag("slo_met"), Some(false));
    assert!(rel_err(c.extra["service_p99_us"], 50.0) <= 0.001);
    assert!(c.extra["p9999_us"] >= c.p999_us);

    let table = output::table(
        std::slice::from_ref(&r),
        &Slo::parse_list("p99=1ms").unwrap(),
    );
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("rate") && lines[0].ends_with("slo"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("1k/s") && lines[1].ends_with("MISSED"),
        "{table}"
    );
    let details = output::details(&r);
    assert!(details.contains("non-2xx 3, timeouts 5"), "{details}");
    assert!(details.contains("503: 3"), "{details}");
    assert!(details.contains("first error: 127.0.0.1:1"), "{details}");

    // The .hgrm spectrum ends at the max and totals every sample.
    let dir = std::env::temp_dir().join(format!("nocturne-load-hgrm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let one = output::write_hgrm(&dir.join("lat.hgrm"), std::slice::from_ref(&r), 1).unwrap();
    assert_eq!(one, vec![dir.join("lat.hgrm")]);
    let text = std::fs::read_to_string(&one[0]).unwrap();
    assert!(text.contains("Total count    =         2000"), "{text}");
    let mut r2 = r.clone();
    r2.rate = 2_000.0;
    let two = output::write_hgrm(&dir.join("lat.hgrm"), &[r.clone(), r2], 2).unwrap();
    assert_eq!(
        two,
        vec![dir.join("lat.1000.hgrm"), dir.join("lat.2000.hgrm")]
    );
    // A sweep that stopped after its first rate still names it by rate,
    // and a fractional rate keeps its decimals.
    let mut r3 = r.clone();
    r3.rate = 1_000.4;
    assert_eq!(
        output::write_hgrm(&dir.join("lat.hgrm"), &[r, r3], 3).unwrap(),
        vec![dir.join("lat.1000.hgrm"), dir.join("lat.1000.4.hgrm")]
    );
    assert!(two.iter().all(|p| p.is_file()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_json_writes_counts_as_integers_and_latencies_as_floats() {
    let mut latency = LatencyHistogram::new();
    latency.record_ns_n(40_000, 2_000);
    let r = result_with(latency.clone(), latency);
    let report = nocturne_bench::report::Report::new(
        "load",
        nocturne_bench::report::Machine::default(),
        output::cases(&r, &[]),
    );
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    let case = &json["cases"][0];
    // docs/design.md §7: counts are ints, like `samples` and `errors`.
    for (key, count) in [
        ("samples", 2_000),
        ("errors", 14),
        ("offered", 2_000),
        ("sent", 1_990),
        ("completed", 1_980),
        ("unsent", 10),
        ("timeouts", 5),
        ("non_2xx", 3),
        ("socket_errors", 6),
        ("connect_errors", 1),
        ("unsolicited", 0),
        ("reconnects", 2),
        ("requests_total", 2_000),
    ] {
        assert!(case[key].is_u64(), "{key} is not an integer: {case}");
        assert_eq!(case[key].as_u64(), Some(count), "{key}: {case}");
    }
    // Latencies and rates stay floats, even when they come out whole.
    for key in [
        "p50_us",
        "p99_us",
        "max_us",
        "p9999_us",
        "mean_us",
        "service_p50_us",
        "send_lag_p50_us",
        "ops_per_s",
        "rate",
        "offered_per_s",
        "window_s",
        "client_cpu_us_per_req",
    ] {
        assert!(case[key].is_f64(), "{key} is not a float: {case}");
    }
    // And the report reads back as it was written.
    let back = nocturne_bench::report::Report::from_json(&report.to_json()).unwrap();
    assert_eq!(back, report);
}
