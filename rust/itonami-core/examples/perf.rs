//! Timing harness of the core without Python (`cargo run --release --example perf`).
//!
//! Builds the same 1,000,000-event history as `benches/test_core_bench.py` and
//! times replay, load with hash checks, verify, single appends, `state_at_tx`
//! and the memory of small idle executions.

use std::time::Instant;

mod common;

use common::{start, tick};
use itonami_core::{replay, Event, EventKind, StoreConfig, VersionStore};

fn rss() -> usize {
    let text = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = text
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    // `perf <n> <part|all> <snapshot interval>`; a snapshot every 1,000
    // versions unless told.
    let snapshot_every: u64 = std::env::args()
        .nth(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let store = VersionStore::new(StoreConfig {
        snapshot_every,
        snapshot_retention: 0,
        ..StoreConfig::default()
    });
    store.append("big", 0, start()).unwrap();
    let t = Instant::now();
    let mut v = 1;
    while v < n {
        let k = (n - v).min(10_000);
        let batch: Vec<Event> = (0..k).map(|i| tick(v + i)).collect();
        store.append_batch("big", v, &batch).unwrap();
        v += k;
    }
    let el = t.elapsed().as_secs_f64();
    println!("append_batch: {:.2} us/event", el * 1e6 / n as f64);
    let history = store.encoded_history("big", 0).unwrap();
    let hashes: Vec<u8> = store
        .history("big")
        .unwrap()
        .iter()
        .flat_map(|i| i.hash)
        .collect();

    // `perf <n> load|replay|state_at_tx`: only repeat that part (for a profiler).
    match std::env::args().nth(2).as_deref() {
        Some("load") => {
            for _ in 0..5 {
                let other = VersionStore::default();
                other
                    .load("big", &history, Some(&hashes), None, None)
                    .unwrap();
            }
            return;
        }
        Some("state_at_tx") => {
            let infos = store.history("big").unwrap();
            for r in 0..20_000usize {
                let tx = infos[(r * 7919) % infos.len()].tx;
                std::hint::black_box(store.state_at_tx("big", tx).unwrap());
            }
            return;
        }
        Some("replay") => {
            let mut best = f64::MAX;
            for _ in 0..10 {
                let t = Instant::now();
                std::hint::black_box(replay("big", &history).unwrap());
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!(
                "replay, best of 10: {:.2} M events/s",
                n as f64 / best / 1e6
            );
            return;
        }
        _ => {}
    }

    // The first replay after building the store runs on a cold heap; the
    // median of five is the figure, the first and the best are shown too.
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let s = replay("big", &history).unwrap();
            assert_eq!(s.version, n);
            t.elapsed().as_secs_f64()
        })
        .collect();
    let first = runs[0];
    runs.sort_by(f64::total_cmp);
    let replay_s = runs[2];
    println!(
        "replay: {:.2} M events/s (median of 5; first {:.2}, best {:.2})",
        n as f64 / replay_s / 1e6,
        n as f64 / first / 1e6,
        n as f64 / runs[0] / 1e6
    );

    let t = Instant::now();
    let other = VersionStore::default();
    other
        .load("big", &history, Some(&hashes), None, None)
        .unwrap();
    let load_s = t.elapsed().as_secs_f64();
    println!("load+check: {:.2} M events/s", n as f64 / load_s / 1e6);

    // The Merkle work of one thread (load+check minus the same replay without
    // hashing) against raw blake3 over the same event bytes, both in Rust.
    let frames: Vec<&[u8]> = itonami_core::event::frames(&history)
        .map(|f| f.map(|(_, bytes)| bytes))
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(frames.len() as u64, n);
    let t = Instant::now();
    let mut acc = 0u8;
    for f in &frames {
        acc ^= blake3::hash(f).as_bytes()[0];
    }
    let raw_s = t.elapsed().as_secs_f64();
    let merkle_s = (load_s - replay_s).max(1e-9);
    println!(
        "raw blake3 over the events: {:.1} ns/event ({acc}); Merkle work: {:.1} ns/event; \
         ratio raw/Merkle {:.2}",
        raw_s * 1e9 / n as f64,
        merkle_s * 1e9 / n as f64,
        raw_s / merkle_s
    );

    let t = Instant::now();
    store.verify("big").unwrap();
    let el = t.elapsed().as_secs_f64();
    println!("verify: {:.3} s", el);

    // Txs spread over the whole history (a stride prime to its length), so
    // the fold from the nearest snapshot averages half the interval.
    let infos = store.history("big").unwrap();
    let txs: Vec<u64> = (0..2000usize)
        .map(|r| infos[(r * 7919 + 10) % infos.len()].tx)
        .collect();
    let rounds = 2000;
    let t = Instant::now();
    for r in 0..rounds {
        let s = store.state_at_tx("big", txs[r % txs.len()]).unwrap();
        assert!(s.version > 0);
    }
    let el = t.elapsed().as_secs_f64();
    println!(
        "state_at_tx (a snapshot every {snapshot_every} versions): {:.1} us",
        el * 1e6 / rounds as f64
    );

    let single = VersionStore::default();
    single.append("a", 0, start()).unwrap();
    let m = 200_000u64;
    let events: Vec<Event> = (1..=m).map(tick).collect();
    let t = Instant::now();
    for (i, e) in events.into_iter().enumerate() {
        single.append("a", i as u64 + 1, e).unwrap();
    }
    let el = t.elapsed().as_secs_f64();
    println!(
        "append single (core only): {:.2} us/event",
        el * 1e6 / m as f64
    );

    let t = Instant::now();
    for i in 0..m {
        let e = tick(i + 1);
        std::hint::black_box(e);
    }
    let el = t.elapsed().as_secs_f64();
    println!("  of which Event::new: {:.2} us/event", el * 1e6 / m as f64);

    let t = Instant::now();
    let mut h = [7u8; 32];
    let k = 1_000_000;
    for _ in 0..k {
        h = itonami_core::merkle::node_hash(&h, &h);
    }
    let el = t.elapsed().as_secs_f64();
    println!(
        "node hash (65 bytes): {:.0} ns {}",
        el * 1e9 / k as f64,
        h[0]
    );

    let small = VersionStore::default();
    let before = rss();
    let count = 10_000;
    let def = "d".repeat(64);
    for i in 0..count {
        let id = format!("exec-{i:08}");
        let data = format!(
            r#"{{"definition_hash":"{def}","inputs":{{}},"workflow_id":"wf","workflow_version":"1"}}"#
        );
        let a = Event::new(EventKind::WorkflowStarted, "", 0, data.as_bytes(), 1).unwrap();
        let b = Event::new(
            EventKind::WaitStarted,
            "0",
            0,
            br#"{"kind":"signal","name":"go"}"#,
            2,
        )
        .unwrap();
        small.append_batch(&id, 0, &[a]).unwrap();
        small.append(&id, 1, b).unwrap();
    }
    println!("small execution: {} bytes each", (rss() - before) / count);
}
