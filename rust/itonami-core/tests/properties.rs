//! Property tests of the core: replay == incremental apply, snapshot restore ==
//! full replay, MVCC reads == folds, and tamper detection.

mod common;

use common::{assert_flips_rejected, assert_proof_flips_fail, assert_reorders_rejected, join};
use itonami_core::event::frames;
use itonami_core::merkle::{root_of, state_root_hash, Hash, ROOT_KEY};
use itonami_core::state::Category;
use itonami_core::{
    decode_history, replay, Event, EventKind, ExecutionState, StoreConfig, StoreError, VersionStore,
};
use proptest::prelude::*;

const ID: &str = "exec-1";

/// One random candidate event; `build` keeps only those the reducer accepts,
/// so every generated history is valid by construction.
#[derive(Clone, Debug)]
struct Candidate {
    kind: u16,
    path: u8,
    attempt: u8,
    value: u8,
}

fn candidate() -> impl Strategy<Value = Candidate> {
    (2u16..=31, 0u8..4, 0u8..4, any::<u8>()).prop_map(|(kind, path, attempt, value)| Candidate {
        kind,
        path,
        attempt,
        value,
    })
}

fn data_for(kind: EventKind, c: &Candidate) -> String {
    let v = c.value;
    match kind {
        EventKind::WorkflowCompleted => format!(r#"{{"outputs":{{"n":{v}}}}}"#),
        EventKind::ActivityScheduled => {
            format!(
                r#"{{"activity":"act{}","input":{{"x":{v},"a":[1,2]}}}}"#,
                v % 3
            )
        }
        EventKind::ActivityCompleted => format!(r#"{{"result":{v}}}"#),
        EventKind::ActivityRetryScheduled => {
            format!(r#"{{"error":{{"message":"m","type":"E"}},"retry_at":{v}}}"#)
        }
        EventKind::DecisionMade => format!(r#"{{"branch":{}}}"#, v % 3),
        EventKind::TimerScheduled => format!(r#"{{"fire_at":{v}}}"#),
        EventKind::SignalReceived => format!(r#"{{"name":"s{}","payload":{v}}}"#, v % 2),
        EventKind::ExternalEventReceived => r#"{"event_type":"t","payload":null}"#.into(),
        EventKind::ChildWorkflowStarted => {
            r#"{"child_execution_id":"c1","workflow_id":"w","workflow_version":"1"}"#.into()
        }
        EventKind::ChildWorkflowCompleted => r#"{"child_execution_id":"c1","outputs":{}}"#.into(),
        EventKind::ChildWorkflowFailed => {
            r#"{"child_execution_id":"c1","error":{"type":"E"}}"#.into()
        }
        EventKind::CompensationStepCompleted => {
            format!(r#"{{"result":null,"saga":"0/{}"}}"#, v % 4)
        }
        EventKind::SnapshotTaken => r#"{"version":1}"#.into(),
        EventKind::StepCompleted if v % 2 == 0 => r#"{"consume_signal":"s0","output":1}"#.into(),
        EventKind::StepCompleted => format!(r#"{{"output":{v}}}"#),
        EventKind::WaitStarted => r#"{"kind":"signal","name":"s0"}"#.into(),
        EventKind::StepCancelled | EventKind::WorkflowCancelled => r#"{"reason":"r"}"#.into(),
        _ => format!(r#"{{"error":{{"message":"boom {v}","type":"E"}}}}"#),
    }
}

/// Builds a valid history: `workflow_started`, then every candidate the
/// reducer accepts.
fn build(candidates: &[Candidate]) -> Vec<Event> {
    let start = Event::new(
        EventKind::WorkflowStarted,
        "",
        0,
        br#"{"workflow_id":"wf","workflow_version":"1","definition_hash":"h","inputs":{"b":[1,2],"a":"x"}}"#,
        1_000,
    )
    .expect("valid start");
    let mut state = ExecutionState::new(ID);
    state.apply(&start).expect("start applies");
    let mut out = vec![start];
    for (i, c) in candidates.iter().enumerate() {
        let Some(kind) = EventKind::from_code(c.kind) else {
            continue;
        };
        let workflow_level = matches!(
            kind,
            EventKind::WorkflowCompleted
                | EventKind::WorkflowFailed
                | EventKind::WorkflowCancelled
                | EventKind::WorkflowTimedOut
                | EventKind::WorkflowCompensated
                | EventKind::SignalReceived
                | EventKind::SnapshotTaken
        );
        // Keep most histories running so later events have a chance.
        if kind.is_terminal() && c.value % 8 != 0 {
            continue;
        }
        let step = if workflow_level {
            String::new()
        } else {
            format!("0/{}", c.path)
        };
        let data = data_for(kind, c);
        let event = Event::new(
            kind,
            step,
            u32::from(c.attempt),
            data.as_bytes(),
            2_000 + i as i64,
        )
        .expect("generated data is valid JSON");
        if state.apply(&event).is_ok() {
            out.push(event);
        }
    }
    out
}

fn history_of(events: &[Event]) -> Vec<u8> {
    itonami_core::encode_history(events).expect("encodes")
}

fn append_all(store: &VersionStore, id: &str, events: &[Event]) -> Vec<u8> {
    let mut hashes = Vec::new();
    for (v, e) in events.iter().enumerate() {
        let a = store
            .append(id, v as u64, e.clone())
            .expect("valid event appends");
        hashes.extend_from_slice(&a.hash);
    }
    hashes
}

/// The leaves of the entries other than the header, in slot order (slot
/// `s` is leaf `s - 1`), computed independently of the store's tree.
fn entry_leaves(state: &ExecutionState) -> Vec<Hash> {
    let mut slots: Vec<(u32, Category, usize)> = Vec::new();
    slots.extend(
        state
            .steps
            .values()
            .enumerate()
            .map(|(i, v)| (v.slot, Category::Step, i)),
    );
    slots.extend(
        state
            .timers
            .values()
            .enumerate()
            .map(|(i, v)| (v.slot, Category::Timer, i)),
    );
    slots.extend(
        state
            .waits
            .values()
            .enumerate()
            .map(|(i, v)| (v.slot, Category::Wait, i)),
    );
    slots.extend(
        state
            .signals
            .values()
            .enumerate()
            .map(|(i, v)| (v.slot, Category::Signal, i)),
    );
    slots.extend(
        state
            .compensations
            .values()
            .enumerate()
            .map(|(i, v)| (v.slot, Category::Compensation, i)),
    );
    slots.sort_unstable_by_key(|e| e.0);
    for (k, (slot, _, _)) in slots.iter().enumerate() {
        assert_eq!(*slot as usize, k + 1, "slots are dense from 1");
    }
    slots
        .into_iter()
        .map(|(slot, cat, i)| {
            let (s, leaf) = state.entry_leaf(cat, i).expect("entry exists");
            assert_eq!(s, slot);
            leaf
        })
        .collect()
}

fn json(state: &ExecutionState) -> Vec<u8> {
    let mut s = state.clone();
    s.tx = 0;
    s.to_json()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn replay_equals_incremental_apply(cands in prop::collection::vec(candidate(), 0..120)) {
        let events = build(&cands);
        let history = history_of(&events);
        let store = VersionStore::default();
        let hashes = append_all(&store, ID, &events);
        let live = store.state(ID).unwrap();
        let replayed = replay(ID, &history).unwrap();
        prop_assert_eq!(json(&live), json(&replayed));
        prop_assert_eq!(live.state_root(), replayed.state_root());
        prop_assert_eq!(decode_history(&history).unwrap(), events.clone());

        let loaded = VersionStore::default();
        loaded.load(ID, &history, Some(&hashes), None, None).unwrap();
        prop_assert_eq!(loaded.head(ID), store.head(ID));
        prop_assert_eq!(json(&loaded.state(ID).unwrap()), json(&live));
        prop_assert_eq!(store.encoded_history(ID, 0).unwrap(), history);
        let report = store.verify(ID).unwrap();
        prop_assert_eq!(report.versions, events.len() as u64);
        // The incrementally maintained tree equals one built from scratch.
        let (state, root) = store.state_with_root(ID).unwrap();
        prop_assert_eq!(state.state_root(), root);
    }

    #[test]
    fn state_root_follows_its_definition(cands in prop::collection::vec(candidate(), 0..80)) {
        let events = build(&cands);
        let store = VersionStore::default();
        append_all(&store, ID, &events);
        let infos = store.history(ID).unwrap();
        let mut state = ExecutionState::new(ID);
        let mut entries_root = root_of(&[]);
        for (event, info) in events.iter().zip(&infos) {
            state.apply(event).unwrap();
            let leaves = entry_leaves(&state);
            let new_entries_root = root_of(&leaves);
            // Events that change only the header leave the entries' tree alone.
            let header_only = matches!(
                event.kind,
                EventKind::WorkflowCompleted
                    | EventKind::WorkflowFailed
                    | EventKind::WorkflowTimedOut
                    | EventKind::WorkflowCompensated
                    | EventKind::SnapshotTaken
            );
            if header_only {
                prop_assert_eq!(new_entries_root, entries_root);
            }
            entries_root = new_entries_root;
            prop_assert_eq!(state.merkle_tree().root(), entries_root);
            let mut pair = state.header_leaf().to_vec();
            pair.extend_from_slice(&entries_root);
            let expected = *blake3::keyed_hash(&ROOT_KEY, &pair).as_bytes();
            // One event per commit: every version is sealed with its root.
            prop_assert_eq!(info.state_root, Some(expected));
            prop_assert_eq!(state.state_root(), expected);
            prop_assert_eq!(state_root_hash(&state.header_leaf(), &entries_root), expected);
        }
    }

    #[test]
    fn snapshot_restore_equals_full_replay(
        cands in prop::collection::vec(candidate(), 0..80),
        cut in any::<prop::sample::Index>(),
    ) {
        let events = build(&cands);
        let k = cut.index(events.len() + 1);
        let (head, tail) = events.split_at(k);
        let store = VersionStore::default();
        append_all(&store, ID, head);
        let full = VersionStore::default();
        let hashes = append_all(&full, ID, &events);
        let snap = if k == 0 { None } else { Some(store.snapshot(ID).unwrap()) };
        let restored = VersionStore::default();
        restored
            .load(ID, &history_of(tail), Some(&hashes[k * 32..]), None, snap.as_deref())
            .unwrap();
        prop_assert_eq!(restored.head(ID), full.head(ID));
        let (a, ra) = restored.state_with_root(ID).unwrap();
        let (b, rb) = full.state_with_root(ID).unwrap();
        prop_assert_eq!(json(&a), json(&b));
        prop_assert_eq!(ra, rb);
        prop_assert_eq!(restored.verify(ID).unwrap().head_hash, full.head(ID).1);
        // Later appends chain identically.
        let extra = Event::new(EventKind::SignalReceived, "", 0, br#"{"name":"late","payload":1}"#, 9)
            .unwrap();
        let v = events.len() as u64;
        let x = restored.append(ID, v, extra.clone());
        let y = full.append(ID, v, extra);
        match (x, y) {
            (Ok(x), Ok(y)) => prop_assert_eq!(x.hash, y.hash),
            (Err(_), Err(_)) => {}
            _ => prop_assert!(false, "restored and full disagree on a later append"),
        }
    }

    #[test]
    fn state_at_version_is_fold_of_prefix(
        cands in prop::collection::vec(candidate(), 0..80),
        every in 0u64..6,
        retention in 0usize..3,
        chunk in 1usize..9,
    ) {
        let events = build(&cands);
        let store = VersionStore::new(StoreConfig {
            snapshot_every: every,
            snapshot_retention: retention,
            ..StoreConfig::default()
        });
        // Appended in batches, so snapshots taken inside a batch are checked too.
        for (i, part) in events.chunks(chunk).enumerate() {
            store.append_batch(ID, (i * chunk) as u64, part).unwrap();
        }
        let infos = store.history(ID).unwrap();
        let mut fold = ExecutionState::new(ID);
        for k in 0..=events.len() {
            if k > 0 {
                fold.apply(&events[k - 1]).unwrap();
                let info = &infos[k - 1];
                // Sealed: the end of each batch and each snapshot version.
                let sealed = k % chunk == 0 || k == events.len()
                    || (every > 0 && k as u64 % every == 0);
                let expected = sealed.then(|| fold.state_root());
                prop_assert_eq!(info.state_root, expected);
                let by_tx = store.state_at_tx(ID, info.tx).unwrap();
                prop_assert_eq!(json(&by_tx), json(&fold));
                prop_assert_eq!(by_tx.tx, info.tx);
            }
            let at = store.state_at_version(ID, k as u64).unwrap();
            prop_assert_eq!(json(&at), json(&fold));
        }
        prop_assert!(store.state_at_version(ID, events.len() as u64 + 1).is_err());
    }
}

fn sample_events() -> Vec<Event> {
    let raw: &[(EventKind, &str, u32, &str)] = &[
        (
            EventKind::WorkflowStarted,
            "",
            0,
            r#"{"workflow_id":"wf","inputs":{"a":1}}"#,
        ),
        (EventKind::StepStarted, "0", 0, "{}"),
        (
            EventKind::ActivityScheduled,
            "0/0",
            1,
            r#"{"activity":"a","input":{}}"#,
        ),
        (EventKind::ActivityStarted, "0/0", 1, "{}"),
        (
            EventKind::ActivityRetryScheduled,
            "0/0",
            1,
            r#"{"error":{"type":"E"},"retry_at":5}"#,
        ),
        (
            EventKind::ActivityScheduled,
            "0/0",
            2,
            r#"{"activity":"a","input":{}}"#,
        ),
        (EventKind::ActivityCompleted, "0/0", 2, r#"{"result":7}"#),
        (
            EventKind::SignalReceived,
            "",
            0,
            r#"{"name":"go","payload":1}"#,
        ),
        (EventKind::StepCompleted, "0", 0, r#"{"output":7}"#),
        (
            EventKind::WorkflowCompleted,
            "",
            0,
            r#"{"outputs":{"r":7}}"#,
        ),
    ];
    raw.iter()
        .enumerate()
        .map(|(i, (k, s, a, d))| Event::new(*k, *s, *a, d.as_bytes(), 100 + i as i64).unwrap())
        .collect()
}

fn framed(events: &[Event]) -> Vec<Vec<u8>> {
    events.iter().map(|e| e.encode().unwrap()).collect()
}

fn loads(history: &[u8], hashes: &[u8]) -> Result<(), StoreError> {
    VersionStore::default().load(ID, history, Some(hashes), None, None)
}

#[test]
fn every_single_byte_flip_is_detected() {
    let events = sample_events();
    let store = VersionStore::default();
    let hashes = append_all(&store, ID, &events);
    assert_flips_rejected(&history_of(&events), &hashes, loads);
}

#[test]
fn drop_duplicate_swap_and_splice_are_detected() {
    let events = sample_events();
    let store = VersionStore::default();
    let hashes = append_all(&store, ID, &events);
    let parts = framed(&events);
    let n = parts.len();
    assert_reorders_rejected(&parts, |h| loads(h, &hashes).is_err());
    for i in 0..n {
        let mut dropped = parts.clone();
        dropped.remove(i);
        // Dropping an event with its hash: detected, except dropping the last
        // one, which leaves a valid shorter chain with a different head.
        let mut hs = hashes.clone();
        hs.drain(i * 32..i * 32 + 32);
        if i + 1 < n {
            assert!(
                loads(&join(&dropped), &hs).is_err(),
                "drop {i} with its hash"
            );
        } else {
            let s = VersionStore::default();
            s.load(ID, &join(&dropped), Some(&hs), None, None).unwrap();
            assert_ne!(s.head(ID).1, store.head(ID).1);
        }
    }
    // Splice: the same events under another execution's chain.
    let other = VersionStore::default();
    let other_hashes = append_all(&other, "exec-2", &events);
    assert!(loads(&join(&parts), &other_hashes).is_err());
    // Splice: a prefix of one history followed by the tail of another.
    let mut alt = sample_events();
    alt[2] = Event::new(
        EventKind::ActivityScheduled,
        "0/0",
        1,
        br#"{"activity":"b","input":{}}"#,
        102,
    )
    .unwrap();
    let alt_store = VersionStore::default();
    let alt_hashes = append_all(&alt_store, ID, &alt);
    let mut spliced = parts[..5].to_vec();
    spliced.extend(framed(&alt)[5..].iter().cloned());
    let mut spliced_hashes = hashes[..5 * 32].to_vec();
    spliced_hashes.extend_from_slice(&alt_hashes[5 * 32..]);
    match loads(&join(&spliced), &spliced_hashes) {
        Err(StoreError::Integrity { version, .. }) => assert_eq!(version, 6),
        other => panic!("splice undetected: {other:?}"),
    }
}

#[test]
fn inclusion_proofs_verify_and_reject_tampering() {
    let events = sample_events();
    let store = VersionStore::default();
    append_all(&store, ID, &events);
    let (_, head) = store.head(ID);
    for v in 1..=events.len() as u64 {
        let proof = store.inclusion_proof(ID, v).unwrap();
        assert!(proof.verify(&head));
        let round = itonami_core::InclusionProof::from_bytes(&proof.to_bytes()).unwrap();
        assert_eq!(round, proof);
        assert_proof_flips_fail(&proof.to_bytes(), &head);
    }
    assert!(store.inclusion_proof(ID, 0).is_err());
}

#[test]
fn decode_errors_name_offset_and_index() {
    let events = sample_events();
    let history = history_of(&events);
    let starts: Vec<usize> = frames(&history).map(|f| f.unwrap().0).collect();
    // Unknown kind code in the third event.
    let mut bad = history.clone();
    bad[starts[2] + 4 + 1] = 0xff;
    bad[starts[2] + 4 + 2] = 0x7f;
    let err = decode_history(&bad).unwrap_err();
    assert_eq!(err.index, Some(2));
    assert_eq!(err.offset, Some((starts[2] + 5) as u64));
    assert!(
        err.message.contains("unknown event kind"),
        "{}",
        err.message
    );
    // Truncation.
    let err = decode_history(&history[..history.len() - 1]).unwrap_err();
    assert_eq!(err.index, Some(events.len() as u64 - 1));
    // Non-canonical JSON (whitespace) is rejected.
    let mut enc = events[1].encode().unwrap();
    let n = enc.len();
    enc.truncate(n - 2);
    enc.extend_from_slice(b"{ }");
    let len_at = n - 2 - 4;
    enc[len_at..len_at + 4].copy_from_slice(&3u32.to_le_bytes());
    let err = Event::decode(&enc, 0, 0).unwrap_err();
    assert!(err.message.contains("not canonical"), "{}", err.message);
    // Unknown format version.
    let mut enc = events[0].encode().unwrap();
    enc[0] = 2;
    assert!(Event::decode(&enc, 0, 0)
        .unwrap_err()
        .message
        .contains("format version"));
    // Garbage never panics.
    for len in 0..64usize {
        let junk: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
        let _ = decode_history(&junk);
        let _ = itonami_core::snapshot::decode(&junk);
        let _ = itonami_core::InclusionProof::from_bytes(&junk);
    }
}

#[test]
fn rejected_event_changes_nothing_and_conflicts_name_versions() {
    let events = sample_events();
    let store = VersionStore::default();
    append_all(&store, ID, &events[..4]);
    let before = store.state(ID).unwrap().to_json();
    let (v, head) = store.head(ID);
    let bad = Event::new(EventKind::ActivityStarted, "0/0", 1, b"{}", 1).unwrap();
    assert!(matches!(
        store.append(ID, 4, bad),
        Err(StoreError::Reduce { index: 0, .. })
    ));
    // A batch whose second event is rejected appends nothing.
    let batch = vec![events[4].clone(), events[0].clone()];
    let result = store.append_batch(ID, 4, &batch);
    assert!(
        matches!(result, Err(StoreError::Reduce { index: 1, .. })),
        "{result:?}"
    );
    assert_eq!(store.state(ID).unwrap().to_json(), before);
    assert_eq!(store.head(ID), (v, head));
    match store.append(ID, 2, events[4].clone()) {
        Err(StoreError::Conflict {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (2, 4)),
        other => panic!("expected a conflict: {other:?}"),
    }
    // A first event that is not workflow_started creates no execution.
    assert!(store.append("fresh", 0, events[1].clone()).is_err());
    assert!(!store.contains("fresh"));
    let tx = store.last_tx();
    store.advance_tx(tx + 100).unwrap();
    let a = store.append(ID, 4, events[4].clone()).unwrap();
    assert_eq!(a.tx, tx + 101);
    assert!(matches!(
        store.state_at_tx(ID, tx + 500),
        Err(StoreError::OutOfRange { .. })
    ));
}

/// A chain long enough to be verified on several threads (with and without
/// in-memory snapshots) reports the same head as the store and as a
/// fresh load of its history checks.
#[test]
fn long_chain_verifies_in_parallel_ranges() {
    for every in [0u64, 1000] {
        let store = VersionStore::new(StoreConfig {
            snapshot_every: every,
            snapshot_retention: 0,
            ..StoreConfig::default()
        });
        let start = Event::new(
            EventKind::WorkflowStarted,
            "",
            0,
            br#"{"inputs":{},"workflow_id":"wf"}"#,
            0,
        )
        .unwrap();
        store.append(ID, 0, start).unwrap();
        let n = 20_000u64;
        let events: Vec<Event> = (1..n)
            .map(|v| {
                let path = format!("0/{}", ((v - 1) / 2) % 37);
                if v % 2 == 1 {
                    let data = format!(r#"{{"fire_at":{v}}}"#);
                    Event::new(
                        EventKind::TimerScheduled,
                        path,
                        0,
                        data.as_bytes(),
                        v as i64,
                    )
                } else {
                    Event::new(EventKind::TimerFired, path, 0, b"{}", v as i64)
                }
                .unwrap()
            })
            .collect();
        store.append_batch(ID, 1, &events).unwrap();
        let report = store.verify(ID).unwrap();
        assert_eq!(report.versions, n);
        assert_eq!(report.head_hash, store.head(ID).1);
        let hashes: Vec<u8> = store
            .history(ID)
            .unwrap()
            .iter()
            .flat_map(|i| i.hash)
            .collect();
        let history = store.encoded_history(ID, 0).unwrap();
        let loaded = VersionStore::default();
        loaded
            .load(ID, &history, Some(&hashes), None, None)
            .unwrap();
        assert_eq!(loaded.verify(ID).unwrap().head_hash, report.head_hash);
        // history() reads kind and timestamp back from the stored bytes.
        let infos = store.history(ID).unwrap();
        assert_eq!(infos[0].kind, EventKind::WorkflowStarted);
        assert_eq!(infos[1].kind, EventKind::TimerScheduled);
        assert_eq!(infos[2].kind, EventKind::TimerFired);
        assert_eq!(infos[2].timestamp, 2);
    }
}

/// In-memory snapshots share the records of steps that did not change since:
/// a snapshot costs a pointer per step, not a copy of every step.
#[test]
fn snapshots_share_unchanged_step_records() {
    let store = VersionStore::new(StoreConfig {
        snapshot_every: 2,
        snapshot_retention: 0,
        ..StoreConfig::default()
    });
    let start = Event::new(
        EventKind::WorkflowStarted,
        "",
        0,
        br#"{"workflow_id":"wf"}"#,
        0,
    )
    .unwrap();
    store.append(ID, 0, start).unwrap();
    let steps = 50u64;
    for i in 0..steps {
        let e = Event::new(EventKind::StepStarted, format!("0/{i}"), 0, b"{}", i as i64).unwrap();
        store.append(ID, 1 + i, e).unwrap();
    }
    let head = store.state(ID).unwrap();
    let old = store.state_at_version(ID, 10).unwrap();
    assert_eq!(old.steps.len(), 9);
    for (path, step) in &old.steps {
        assert!(std::sync::Arc::ptr_eq(step, &head.steps[path]), "{path}");
        assert!(std::sync::Arc::ptr_eq(
            old.steps.get_key_value(path).unwrap().0,
            head.steps.get_key_value(path).unwrap().0
        ));
    }
    // A step changed after the snapshot is a separate record there.
    let done = Event::new(EventKind::StepCompleted, "0/0", 0, br#"{"output":1}"#, 99).unwrap();
    store.append(ID, 1 + steps, done).unwrap();
    let head = store.state(ID).unwrap();
    assert!(!std::sync::Arc::ptr_eq(
        &old.steps["0/0"],
        &head.steps["0/0"]
    ));
    assert_eq!(old.steps["0/0"].status, itonami_core::StepStatus::Running);
    assert_eq!(
        head.steps["0/0"].status,
        itonami_core::StepStatus::Completed
    );
}
