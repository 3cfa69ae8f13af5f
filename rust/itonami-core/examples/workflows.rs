//! The core's share of the engine's benchmark workload: each workflow is the
//! eight `append_batch` calls a 3-step sequence of no-op activities makes
//! (the events and payloads the engine sends), then its eviction.
//!
//! `cargo run --release -p itonami-core --example workflows [n]`; under
//! callgrind this gives the instructions per workflow in the core.

use std::time::Instant;

use itonami_core::{Event, EventKind, VersionStore};

fn ev(kind: EventKind, step: &str, attempt: u32, data: &[u8]) -> Event {
    Event::new(kind, step, attempt, data, 1_796_174_354_180_850).unwrap()
}

/// The calls of one workflow, as the engine batches them.
fn calls() -> Vec<Vec<Event>> {
    let started = br#"{"workflow_id":"seq3","workflow_version":"1","definition_hash":"455d406b331a26809d63e942c5a8fa22e7395bf7c47134a87be5d806b618c9c6","inputs":{},"parent":null}"#;
    let mut out = vec![vec![ev(EventKind::WorkflowStarted, "", 0, started)]];
    for step in ["0/0", "0/1", "0/2"] {
        out.push(vec![
            ev(
                EventKind::ActivityScheduled,
                step,
                1,
                br#"{"activity":"noop","input":{}}"#,
            ),
            ev(EventKind::ActivityStarted, step, 1, b"{}"),
        ]);
        out.push(vec![ev(
            EventKind::ActivityCompleted,
            step,
            1,
            br#"{"result":{"ok":true}}"#,
        )]);
    }
    out.push(vec![ev(
        EventKind::WorkflowCompleted,
        "",
        0,
        br#"{"outputs":{"ok":true}}"#,
    )]);
    out
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let store = VersionStore::default();
    let calls = calls();
    let ids: Vec<String> = (0..n)
        .map(|i| format!("01a23455-9704-7016-b083-{i:012}"))
        .collect();
    let t = Instant::now();
    for id in &ids {
        let mut v = 0;
        for batch in &calls {
            // The engine encodes each step's events afresh.
            let batch = batch.clone();
            store.append_batch(id, v, &batch).unwrap();
            v += batch.len() as u64;
        }
        store.evict(id);
    }
    let el = t.elapsed().as_secs_f64();
    println!("{:.2} us per workflow in the core", el * 1e6 / n as f64);
}
