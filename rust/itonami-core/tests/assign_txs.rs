//! Property tests of `VersionStore::assign_txs`: the txs a durable store
//! allocated at commit replace the provisional ones without breaking MVCC
//! reads, and bad assignments change nothing.

use itonami_core::{Event, EventKind, StoreConfig, VersionStore};
use proptest::prelude::*;

const ID: &str = "exec-1";

/// `workflow_started` and then `n` signals: a valid history of `n + 1` events.
fn events(n: usize) -> Vec<Event> {
    let start = Event::new(
        EventKind::WorkflowStarted,
        "",
        0,
        br#"{"workflow_id":"wf","inputs":{}}"#,
        1_000,
    )
    .expect("valid start");
    let mut out = vec![start];
    for i in 0..n {
        let data = format!(r#"{{"name":"s{}","payload":{i}}}"#, i % 3);
        out.push(
            Event::new(
                EventKind::SignalReceived,
                "",
                0,
                data.as_bytes(),
                2_000 + i as i64,
            )
            .expect("valid signal"),
        );
    }
    out
}

fn txs_of(store: &VersionStore) -> Vec<u64> {
    store.history(ID).unwrap().iter().map(|i| i.tx).collect()
}

proptest! {
    #[test]
    fn assigned_txs_keep_mvcc_reads_right(
        n in 0usize..40,
        chunk in 1usize..7,
        gaps in prop::collection::vec(1u64..50, 48),
        every in 0u64..4,
        pipelined in any::<bool>(),
    ) {
        let evs = events(n);
        let store = VersionStore::new(StoreConfig {
            snapshot_every: every,
            snapshot_retention: 2,
            ..StoreConfig::default()
        });
        let batches: Vec<&[Event]> = evs.chunks(chunk).collect();
        // Another process committed before us: the store's counter is ahead.
        let mut counter = 10_000u64;
        let mut gap = gaps.iter().cycle();
        let mut assigned: Vec<u64> = Vec::new();
        let mut applied = 0usize;
        for (i, part) in batches.iter().enumerate() {
            if applied == i {
                store.append_batch(ID, (i * chunk) as u64, part).unwrap();
                applied += 1;
            }
            // The engine may already hold the next batch (provisional txs)
            // when this one's commit returns.
            if pipelined && applied == i + 1 && i + 1 < batches.len() {
                store.append_batch(ID, ((i + 1) * chunk) as u64, batches[i + 1]).unwrap();
                applied += 1;
            }
            let txs: Vec<u64> = part
                .iter()
                .map(|_| {
                    counter += gap.next().unwrap();
                    counter
                })
                .collect();
            store.assign_txs(ID, (i * chunk) as u64 + 1, &txs).unwrap();
            assigned.extend(&txs);
            let now = txs_of(&store);
            prop_assert_eq!(&now[..assigned.len()], &assigned[..]);
            prop_assert!(now.windows(2).all(|w| w[0] < w[1]), "txs not increasing: {:?}", now);
            prop_assert!(store.last_tx() >= *now.last().unwrap());
        }
        prop_assert_eq!(txs_of(&store), assigned.clone());
        for (k, &tx) in assigned.iter().enumerate() {
            let version = k as u64 + 1;
            let by_tx = store.state_at_tx(ID, tx).unwrap();
            let by_version = store.state_at_version(ID, version).unwrap();
            prop_assert_eq!(by_tx.version, version);
            prop_assert_eq!(by_tx.tx, tx);
            prop_assert_eq!(by_version.tx, tx);
            // A tx in the gap before the next version reads this version.
            if tx + 1 < assigned.get(k + 1).copied().unwrap_or(u64::MAX) && tx < store.last_tx() {
                prop_assert_eq!(store.state_at_tx(ID, tx + 1).unwrap().version, version);
            }
        }
        prop_assert!(store.state_at_tx(ID, assigned[0] - 1).is_err());
        prop_assert_eq!(store.state(ID).unwrap().tx, *assigned.last().unwrap());
    }

    #[test]
    fn bad_assignments_change_nothing(
        n in 1usize..12,
        first in 0u64..16,
        txs in prop::collection::vec(0u64..40, 1..6),
    ) {
        let evs = events(n);
        let store = VersionStore::default();
        store.append_batch(ID, 0, &evs).unwrap();
        let before = txs_of(&store);
        let last_tx = store.last_tx();
        let held = evs.len() as u64;
        let in_range = first >= 1 && first + txs.len() as u64 - 1 <= held;
        let prev = if first >= 2 && in_range { before[first as usize - 2] } else { 0 };
        let increasing = txs.windows(2).all(|w| w[0] < w[1]) && txs[0] > prev;
        let result = store.assign_txs(ID, first, &txs);
        if !in_range || !increasing {
            prop_assert!(result.is_err());
            prop_assert_eq!(txs_of(&store), before);
            prop_assert_eq!(store.last_tx(), last_tx);
        } else {
            result.unwrap();
            let now = txs_of(&store);
            prop_assert!(now.windows(2).all(|w| w[0] < w[1]));
            let start = first as usize - 1;
            prop_assert_eq!(&now[start..start + txs.len()], &txs[..]);
        }
    }
}

#[test]
fn unknown_execution_and_empty_assignment() {
    let store = VersionStore::default();
    assert!(store.assign_txs("nope", 1, &[5]).is_err());
    store.append_batch(ID, 0, &events(2)).unwrap();
    let before = txs_of(&store);
    store.assign_txs(ID, 1, &[]).unwrap();
    assert_eq!(txs_of(&store), before);
    assert!(store.assign_txs(ID, u64::MAX, &[1, 2]).is_err());
}
