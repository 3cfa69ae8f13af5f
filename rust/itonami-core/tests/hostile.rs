//! Hostile input: values from outside (bytes read back from storage, proofs
//! handed in, txs and versions) never panic the core, and a refused value
//! leaves the store as it was.
//!
//! The proptest targets are the core's fuzz targets: every function that
//! accepts bytes or numbers from outside. `PROPTEST_CASES` scales them (the
//! `fuzz` make target runs many more cases than the default, bounded in time).

use itonami_core::event::frame_into;
use itonami_core::store::MAX_SEQUENCE;
use itonami_core::{
    decode_history, replay, snapshot, Event, EventKind, ExecutionState, InclusionProof,
    StoreConfig, StoreError, VersionStore,
};
use proptest::prelude::*;

const ID: &str = "exec-h";

fn started() -> Event {
    Event::new(
        EventKind::WorkflowStarted,
        "",
        0,
        br#"{"workflow_id":"wf","workflow_version":"1","definition_hash":"h","inputs":{}}"#,
        1,
    )
    .expect("valid start")
}

fn scheduled(path: &str) -> Event {
    Event::new(
        EventKind::ActivityScheduled,
        path,
        1,
        br#"{"activity":"a","input":{}}"#,
        2,
    )
    .expect("valid schedule")
}

/// A store holding one execution of three versions, and its stored parts.
fn sample() -> (VersionStore, Vec<u8>, Vec<u8>, Vec<u64>, Vec<u8>) {
    let store = VersionStore::new(StoreConfig {
        snapshot_every: 2,
        ..StoreConfig::default()
    });
    let mut history = Vec::new();
    let mut hashes = Vec::new();
    let mut txs = Vec::new();
    for (v, event) in [started(), scheduled("s1"), scheduled("s2")]
        .into_iter()
        .enumerate()
    {
        let a = store.append(ID, v as u64, event).expect("append");
        frame_into(&a.encoded, &mut history).expect("frame");
        hashes.extend_from_slice(&a.hash);
        txs.push(a.tx);
    }
    let snap = store.snapshot(ID).expect("snapshot");
    (store, history, hashes, txs, snap)
}

fn proof_bytes(version: u64, later: u32) -> Vec<u8> {
    let event = started().encode().expect("encode");
    let mut out = b"ITNPROOF\x01".to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(event.len() as u32).to_le_bytes());
    out.extend_from_slice(&event);
    out.extend_from_slice(&[0u8; 64]);
    out.extend_from_slice(&later.to_le_bytes());
    for _ in 0..later {
        out.extend_from_slice(&[0u8; 64]);
    }
    out
}

#[test]
fn proof_versions_beyond_the_sequence_are_refused() {
    for (version, later) in [
        (u64::MAX, 0),
        (0, 0),
        (MAX_SEQUENCE, 1),
        (MAX_SEQUENCE + 1, 0),
    ] {
        let err = InclusionProof::from_bytes(&proof_bytes(version, later))
            .expect_err("an impossible version decodes");
        assert!(err.message.contains("version"), "{err}");
    }
    let ok = InclusionProof::from_bytes(&proof_bytes(MAX_SEQUENCE - 1, 1)).expect("in range");
    assert_eq!(ok.head_version(), MAX_SEQUENCE);
    // A hand-built proof (the fields are public) saturates instead of panicking.
    let mut built = ok.clone();
    built.version = u64::MAX;
    assert_eq!(built.head_version(), u64::MAX);
    let _ = built.head();
}

#[test]
fn advance_tx_past_the_sequence_is_refused_and_changes_nothing() {
    let (store, ..) = sample();
    let before = store.last_tx();
    assert!(matches!(
        store.advance_tx(u64::MAX),
        Err(StoreError::TxLimit {
            execution_id: None,
            ..
        })
    ));
    assert_eq!(store.last_tx(), before);
    store
        .append(ID, 3, scheduled("s3"))
        .expect("append after a refused floor");
}

#[test]
fn an_exhausted_tx_space_refuses_the_append_and_keeps_the_store_consistent() {
    let (store, ..) = sample();
    let head = store.head(ID);
    let state = store.state(ID).expect("state");
    store
        .advance_tx(MAX_SEQUENCE)
        .expect("the largest tx is a valid floor");
    match store.append(ID, 3, scheduled("s3")) {
        Err(StoreError::TxLimit {
            execution_id: Some(id),
            ..
        }) => assert_eq!(id, ID),
        other => panic!("expected TxLimit, got {other:?}"),
    }
    assert_eq!(store.head(ID), head);
    assert_eq!(store.state(ID).expect("state").to_json(), state.to_json());
    store.verify(ID).expect("still verifies");
    // A batch fails as a whole, leaving nothing behind either.
    assert!(store
        .append_batch(ID, 3, &[scheduled("s3"), scheduled("s4")])
        .is_err());
    assert_eq!(store.head(ID), head);
    // Loading with no txs draws them too: refused, not wrapped around.
    let (_, history, ..) = sample();
    let loaded = store.load("other", &history, None, None, None);
    assert!(
        matches!(loaded, Err(StoreError::TxLimit { .. })),
        "{loaded:?}"
    );
    assert!(!store.contains("other"));
}

#[test]
fn loaded_txs_beyond_the_sequence_are_integrity_errors() {
    let (_, history, hashes, mut txs, _) = sample();
    for bad in [u64::MAX, MAX_SEQUENCE + 1] {
        txs[2] = bad;
        let store = VersionStore::default();
        match store.load(ID, &history, Some(&hashes), Some(&txs), None) {
            Err(StoreError::Integrity {
                execution_id,
                version,
                ..
            }) => assert_eq!((execution_id.as_str(), version), (ID, 3)),
            other => panic!("expected an integrity error, got {other:?}"),
        }
        assert!(!store.contains(ID));
        assert_eq!(store.last_tx(), 0);
    }
}

#[test]
fn a_state_at_the_largest_version_refuses_events_instead_of_overflowing() {
    let mut state = ExecutionState::new(ID);
    state.apply(&started()).expect("start");
    state.version = MAX_SEQUENCE;
    let err = state
        .apply(&scheduled("s1"))
        .expect_err("no version follows");
    assert!(err.message.contains("largest"), "{err}");
    assert_eq!(state.version, MAX_SEQUENCE);
}

/// Flips, truncates or extends `bytes` as the strategy says.
fn mutate(bytes: &[u8], edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for &(at, xor) in edits {
        if !out.is_empty() {
            let i = at % out.len();
            out[i] ^= xor;
        }
    }
    if let Some(n) = cut {
        out.truncate(n % (out.len() + 1));
    }
    out
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8)>> {
    prop::collection::vec((any::<usize>(), 1u8..=255), 0..4)
}

proptest! {
    #[test]
    fn fuzz_proof_from_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400),
                             edits in edits(), cut in any::<Option<usize>>()) {
        let valid = {
            let (store, ..) = sample();
            store.inclusion_proof(ID, 2).expect("proof").to_bytes()
        };
        for input in [bytes, mutate(&valid, &edits, cut)] {
            if let Ok(proof) = InclusionProof::from_bytes(&input) {
                prop_assert!(proof.head_version() <= MAX_SEQUENCE);
                let _ = proof.head();
                let _ = proof.verify(&[0u8; 32]);
                let _ = proof.decoded_event();
                prop_assert_eq!(proof.to_bytes(), input);
            }
        }
    }

    #[test]
    fn fuzz_decode_and_replay(bytes in prop::collection::vec(any::<u8>(), 0..400),
                              edits in edits(), cut in any::<Option<usize>>()) {
        let (_, history, ..) = sample();
        for input in [bytes, mutate(&history, &edits, cut)] {
            let _ = decode_history(&input);
            let _ = replay(ID, &input);
        }
    }

    #[test]
    fn fuzz_snapshot_decode(edits in edits(), cut in any::<Option<usize>>()) {
        let (.., snap) = sample();
        let input = mutate(&snap, &edits, cut);
        if let Ok(s) = snapshot::decode(&input) {
            prop_assert!(s.version <= MAX_SEQUENCE && s.tx <= MAX_SEQUENCE);
        }
    }

    /// `load` with damaged parts fails cleanly or loads something that then
    /// verifies, accepts an append, and never holds a tx above the sequence.
    #[test]
    fn fuzz_load_then_use(history_edits in edits(), hash_edits in edits(),
                          snap_edits in edits(), cut in any::<Option<usize>>(),
                          txs in prop::collection::vec(any::<u64>(), 0..5),
                          with_snapshot in any::<bool>(), floor in any::<u64>()) {
        let (_, history, hashes, good_txs, snap) = sample();
        let history = mutate(&history, &history_edits, cut);
        let hashes = mutate(&hashes, &hash_edits, None);
        let snap = mutate(&snap, &snap_edits, None);
        let store = VersionStore::default();
        let _ = store.advance_tx(floor);
        let txs = if txs.is_empty() { good_txs } else { txs };
        let loaded = if with_snapshot {
            // the events after the snapshot: none (it was taken at the head)
            store.load(ID, &[], Some(&[]), Some(&[]), Some(&snap))
        } else {
            store.load(ID, &history, Some(&hashes), Some(&txs), None)
        };
        prop_assert!(store.last_tx() <= MAX_SEQUENCE);
        if loaded.is_ok() {
            store.verify(ID).expect("a loaded execution verifies");
            let version = store.version(ID);
            let _ = store.append(ID, version, scheduled("s9"));
            prop_assert!(store.last_tx() <= MAX_SEQUENCE);
            store.verify(ID).expect("still verifies after an append");
        } else {
            prop_assert!(!store.contains(ID));
        }
    }

    #[test]
    fn fuzz_numbers_from_outside(tx in any::<u64>(), version in any::<u64>(),
                                 expected in any::<u64>()) {
        let (store, ..) = sample();
        let _ = store.advance_tx(tx);
        prop_assert!(store.last_tx() <= MAX_SEQUENCE);
        let _ = store.state_at_tx(ID, tx);
        let _ = store.state_at_version(ID, version);
        let _ = store.events(ID, version);
        let _ = store.encoded_history(ID, version);
        let _ = store.inclusion_proof(ID, version);
        let _ = store.append(ID, expected, scheduled("s9"));
        store.verify(ID).expect("numbers never damage the store");
    }
}
