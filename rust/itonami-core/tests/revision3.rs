//! Hash revision 3 (one state root per commit) next to revision 2 (one per
//! version): the chain follows its definition, tampering is detected in
//! both, revision-2 chains (the golden histories) load, verify, prove and
//! keep growing in revision 2.

mod common;

use common::{assert_flips_rejected, assert_proof_flips_fail, assert_reorders_rejected, join};
use itonami_core::event::frames;
use itonami_core::store::{genesis_node, link_hash, node_hash, seal_hash, HashRevision};
use itonami_core::{Event, EventKind, InclusionProof, StoreConfig, StoreError, VersionStore};

const ID: &str = "exec-3";

fn ev(kind: EventKind, step: &str, attempt: u32, data: &str, ts: i64) -> Event {
    Event::new(kind, step, attempt, data.as_bytes(), ts).expect("valid event")
}

/// A run of 12 events: start, two activities with a retry, a signal, the end.
fn events() -> Vec<Event> {
    use EventKind as K;
    vec![
        ev(
            K::WorkflowStarted,
            "",
            0,
            r#"{"inputs":{"a":1},"workflow_id":"wf"}"#,
            1,
        ),
        ev(K::StepStarted, "0", 0, "{}", 2),
        ev(
            K::ActivityScheduled,
            "0/0",
            1,
            r#"{"activity":"a","input":{}}"#,
            3,
        ),
        ev(K::ActivityStarted, "0/0", 1, "{}", 4),
        ev(
            K::ActivityRetryScheduled,
            "0/0",
            1,
            r#"{"error":{"type":"E"},"retry_at":9}"#,
            5,
        ),
        ev(
            K::ActivityScheduled,
            "0/0",
            2,
            r#"{"activity":"a","input":{}}"#,
            6,
        ),
        ev(K::ActivityCompleted, "0/0", 2, r#"{"result":7}"#, 7),
        ev(K::SignalReceived, "", 0, r#"{"name":"go","payload":1}"#, 8),
        ev(
            K::ActivityScheduled,
            "0/1",
            1,
            r#"{"activity":"b","input":{}}"#,
            9,
        ),
        ev(K::ActivityCompleted, "0/1", 1, r#"{"result":8}"#, 10),
        ev(K::StepCompleted, "0", 0, r#"{"output":7}"#, 11),
        ev(K::WorkflowCompleted, "", 0, r#"{"outputs":{"r":7}}"#, 12),
    ]
}

/// Commits of sizes 1, 4, 3, 4: versions 1, 5, 8 and 12 end a commit.
const COMMITS: [usize; 4] = [1, 4, 3, 4];
const SEALED: [u64; 4] = [1, 5, 8, 12];

fn batched(store: &VersionStore, id: &str, events: &[Event]) -> Vec<u8> {
    let mut hashes = Vec::new();
    let mut at = 0usize;
    for n in COMMITS {
        let part = &events[at..(at + n).min(events.len())];
        for a in store.append_batch(id, at as u64, part).expect("appends") {
            hashes.extend_from_slice(&a.hash);
        }
        at += n;
    }
    hashes
}

fn framed(events: &[Event]) -> Vec<Vec<u8>> {
    events
        .iter()
        .map(|e| e.encode().expect("encodes"))
        .collect()
}

fn loads(history: &[u8], hashes: &[u8]) -> Result<(), StoreError> {
    VersionStore::default().load(ID, history, Some(hashes), None, None)
}

fn bad_version(result: Result<(), StoreError>) -> u64 {
    match result {
        Err(StoreError::Integrity { version, .. }) => version,
        other => panic!("expected an integrity error, got {other:?}"),
    }
}

#[test]
fn revision3_chain_follows_its_definition() {
    let events = events();
    let store = VersionStore::default();
    let hashes = batched(&store, ID, &events);
    let infos = store.history(ID).unwrap();
    let mut prev = genesis_node(ID);
    assert_eq!(
        prev,
        blake3::derive_key("itonami 2026-12 chain genesis v3", ID.as_bytes())
    );
    for (i, (event, info)) in events.iter().zip(&infos).enumerate() {
        let v = i as u64 + 1;
        let eh = *blake3::hash(&event.encode().unwrap()).as_bytes();
        let node = if SEALED.contains(&v) {
            let root = info.state_root.expect("a commit's last version is sealed");
            let state = store.state_at_version(ID, v).unwrap();
            assert_eq!(root, state.state_root());
            let mut msg = vec![0x01];
            msg.extend_from_slice(&v.to_le_bytes());
            msg.extend_from_slice(&eh);
            msg.extend_from_slice(&root);
            assert_eq!(
                seal_hash(&prev, v, &eh, &root),
                *blake3::keyed_hash(&prev, &msg).as_bytes()
            );
            seal_hash(&prev, v, &eh, &root)
        } else {
            assert_eq!(info.state_root, None, "version {v} is inside a commit");
            let mut msg = vec![0x00];
            msg.extend_from_slice(&v.to_le_bytes());
            msg.extend_from_slice(&eh);
            assert_eq!(
                link_hash(&prev, v, &eh),
                *blake3::keyed_hash(&prev, &msg).as_bytes()
            );
            link_hash(&prev, v, &eh)
        };
        assert_eq!(info.hash, node, "version {v}");
        assert_eq!(&hashes[i * 32..i * 32 + 32], &node);
        prev = node;
    }
    // Loading with the stored hashes finds the same seals; without them,
    // only the head is sealed (one commit), so the head differs.
    let history = store.encoded_history(ID, 0).unwrap();
    let loaded = VersionStore::default();
    loaded
        .load(ID, &history, Some(&hashes), None, None)
        .unwrap();
    assert_eq!(loaded.history(ID).unwrap(), infos);
    assert_eq!(loaded.verify(ID).unwrap().head_hash, store.head(ID).1);
    let fresh = VersionStore::default();
    fresh.load(ID, &history, None, None, None).unwrap();
    let fresh_infos = fresh.history(ID).unwrap();
    assert!(fresh_infos[..11].iter().all(|i| i.state_root.is_none()));
    assert_eq!(fresh_infos[11].state_root, infos[11].state_root);
    assert_ne!(fresh.head(ID).1, store.head(ID).1);
    fresh.verify(ID).unwrap();
}

#[test]
fn snapshot_versions_are_sealed_inside_a_commit() {
    let events = events();
    let store = VersionStore::new(StoreConfig {
        snapshot_every: 3,
        snapshot_retention: 0,
        ..StoreConfig::default()
    });
    store.append_batch(ID, 0, &events).unwrap();
    let sealed: Vec<u64> = store
        .history(ID)
        .unwrap()
        .iter()
        .filter(|i| i.state_root.is_some())
        .map(|i| i.version)
        .collect();
    assert_eq!(sealed, vec![3, 6, 9, 12]);
    store.verify(ID).unwrap();
}

#[test]
fn tampering_with_a_revision3_chain_is_detected() {
    let events = events();
    let store = VersionStore::default();
    let hashes = batched(&store, ID, &events);
    let parts = framed(&events);
    let history = join(&parts);
    assert_flips_rejected(&history, &hashes, loads);
    assert_reorders_rejected(&parts, |h| loads(h, &hashes).is_err());
    // The same events chained for another execution.
    let other = VersionStore::default();
    let other_hashes = batched(&other, "exec-other", &events);
    assert_eq!(bad_version(loads(&history, &other_hashes)), 1);
}

#[test]
fn a_tampered_seal_is_rejected() {
    let events = events();
    let store = VersionStore::default();
    let hashes = batched(&store, ID, &events);
    let history = store.encoded_history(ID, 0).unwrap();
    let bodies: Vec<&[u8]> = frames(&history).map(|f| f.unwrap().1).collect();
    // Re-chain with a wrong state root at the seal of version 5 and every
    // later node recomputed from it: the chain is self-consistent but its
    // seal does not match the state the events fold to.
    let rechain = |root_at_5: [u8; 32]| {
        let mut out = hashes[..4 * 32].to_vec();
        let mut prev: [u8; 32] = hashes[3 * 32..4 * 32].try_into().unwrap();
        for (i, body) in bodies.iter().enumerate().skip(4) {
            let v = i as u64 + 1;
            let eh = *blake3::hash(body).as_bytes();
            let info = &store.history(ID).unwrap()[i];
            prev = match info.state_root {
                Some(_) if v == 5 => seal_hash(&prev, v, &eh, &root_at_5),
                Some(root) => seal_hash(&prev, v, &eh, &root),
                None => link_hash(&prev, v, &eh),
            };
            out.extend_from_slice(&prev);
        }
        out
    };
    let true_root = store.history(ID).unwrap()[4].state_root.unwrap();
    assert_eq!(rechain(true_root), hashes);
    let mut wrong = true_root;
    wrong[0] ^= 1;
    assert_eq!(bad_version(loads(&history, &rechain(wrong))), 5);
    // Sealing a version as revision 2 would inside a revision-3 chain.
    let mut mixed = hashes.clone();
    let eh = *blake3::hash(bodies[4]).as_bytes();
    let prev: [u8; 32] = hashes[3 * 32..4 * 32].try_into().unwrap();
    mixed[4 * 32..5 * 32].copy_from_slice(&node_hash(5, &prev, &true_root, &eh));
    assert_eq!(bad_version(loads(&history, &mixed)), 5);
}

fn golden(name: &str) -> (Vec<u8>, Vec<u8>) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/golden/");
    let read = |ext: &str| std::fs::read(format!("{dir}{name}.{ext}")).expect("golden file");
    (read("history"), read("hashes"))
}

#[test]
fn a_revision2_chain_loads_verifies_and_grows_in_revision2() {
    let (history, hashes) = golden("order_completed");
    let store = VersionStore::default();
    store
        .load("order_completed", &history, Some(&hashes), None, None)
        .unwrap();
    let infos = store.history("order_completed").unwrap();
    assert!(infos.iter().all(|i| i.state_root.is_some()));
    let (n, head) = store.head("order_completed");
    assert_eq!(&head[..], &hashes[hashes.len() - 32..]);
    // A snapshot of a revision-2 execution keeps format 1.
    let snap = store.snapshot("order_completed").unwrap();
    assert_eq!(snap[8], 1);
    let extra = [
        ev(
            EventKind::SnapshotTaken,
            "",
            0,
            &format!(r#"{{"version":{n}}}"#),
            99,
        ),
        ev(
            EventKind::SnapshotTaken,
            "",
            0,
            &format!(r#"{{"version":{}}}"#, n + 1),
            100,
        ),
    ];
    let added = store.append_batch("order_completed", n, &extra).unwrap();
    // Every new version is sealed as revision 2 defines it.
    let mut prev = head;
    for (a, e) in added.iter().zip(&extra) {
        let root = store
            .state_at_version("order_completed", a.version)
            .unwrap()
            .state_root();
        let eh = *blake3::hash(&e.encode().unwrap()).as_bytes();
        assert_eq!(a.hash, node_hash(a.version, &prev, &root, &eh));
        prev = a.hash;
    }
    store.verify("order_completed").unwrap();
    // The grown chain reloads, and so does its snapshot plus nothing after it.
    let all_history = store.encoded_history("order_completed", 0).unwrap();
    let all_hashes: Vec<u8> = store
        .history("order_completed")
        .unwrap()
        .iter()
        .flat_map(|i| i.hash)
        .collect();
    let again = VersionStore::default();
    again
        .load(
            "order_completed",
            &all_history,
            Some(&all_hashes),
            None,
            None,
        )
        .unwrap();
    assert_eq!(again.head("order_completed"), store.head("order_completed"));
    let from_snap = VersionStore::default();
    let tail_history = store.encoded_history("order_completed", n).unwrap();
    from_snap
        .load(
            "order_completed",
            &tail_history,
            Some(&all_hashes[n as usize * 32..]),
            None,
            Some(&snap),
        )
        .unwrap();
    assert_eq!(
        from_snap.head("order_completed"),
        store.head("order_completed")
    );
    // Proofs of a revision-2 chain are format 1 and check against the head.
    let (_, head) = store.head("order_completed");
    for v in [1, n, n + 2] {
        let proof = store.inclusion_proof("order_completed", v).unwrap();
        assert_eq!(proof.revision, HashRevision::Two);
        assert_eq!(proof.to_bytes()[8], 1);
        assert!(proof.verify(&head));
    }
}

#[test]
fn revision3_snapshots_name_their_revision_and_restore() {
    let events = events();
    let store = VersionStore::default();
    let hashes = batched(&store, ID, &events[..8]);
    let snap = store.snapshot(ID).unwrap();
    assert_eq!((snap[8], snap[9]), (2, 3));
    let full = VersionStore::default();
    let all = batched(&full, ID, &events);
    assert_eq!(&all[..hashes.len()], &hashes[..]);
    let restored = VersionStore::default();
    let tail = full.encoded_history(ID, 8).unwrap();
    restored
        .load(ID, &tail, Some(&all[8 * 32..]), None, Some(&snap))
        .unwrap();
    assert_eq!(restored.head(ID), full.head(ID));
    restored.verify(ID).unwrap();
    // The snapshot's own revision decides: a revision-2 reading of it fails.
    let mut as_rev2 = snap.clone();
    as_rev2.remove(9);
    as_rev2[8] = 1;
    let body = as_rev2.len() - 32;
    let sum = *blake3::hash(&as_rev2[..body]).as_bytes();
    as_rev2[body..].copy_from_slice(&sum);
    let wrong = VersionStore::default();
    assert!(wrong
        .load(ID, &tail, Some(&all[8 * 32..]), None, Some(&as_rev2))
        .is_err());
}

#[test]
fn revision3_proofs_verify_and_reject_tampering() {
    let events = events();
    let store = VersionStore::default();
    batched(&store, ID, &events);
    let (_, head) = store.head(ID);
    for v in 1..=events.len() as u64 {
        let proof = store.inclusion_proof(ID, v).unwrap();
        assert_eq!(proof.revision, HashRevision::Three);
        assert_eq!(proof.state_root.is_some(), SEALED.contains(&v));
        assert!(proof.verify(&head), "version {v}");
        let bytes = proof.to_bytes();
        assert_eq!(bytes[8], 2);
        assert_eq!(InclusionProof::from_bytes(&bytes).unwrap(), proof);
        assert_proof_flips_fail(&bytes, &head);
    }
}

#[test]
fn long_batched_chains_verify_in_parallel_ranges() {
    let mut events = vec![ev(
        EventKind::WorkflowStarted,
        "",
        0,
        r#"{"inputs":{},"workflow_id":"wf"}"#,
        0,
    )];
    for v in 1..20_000u64 {
        let path = format!("0/{}", (v - 1) / 2 % 50);
        events.push(if v % 2 == 1 {
            ev(
                EventKind::TimerScheduled,
                &path,
                0,
                &format!(r#"{{"fire_at":{v}}}"#),
                v as i64,
            )
        } else {
            ev(EventKind::TimerFired, &path, 0, "{}", v as i64)
        });
    }
    for every in [0u64, 700] {
        let store = VersionStore::new(StoreConfig {
            snapshot_every: every,
            snapshot_retention: 0,
            ..StoreConfig::default()
        });
        let mut v = 0usize;
        for chunk in events.chunks(3_001) {
            store.append_batch(ID, v as u64, chunk).unwrap();
            v += chunk.len();
        }
        let report = store.verify(ID).unwrap();
        assert_eq!(report.head_hash, store.head(ID).1);
        let history = store.encoded_history(ID, 0).unwrap();
        let hashes: Vec<u8> = store
            .history(ID)
            .unwrap()
            .iter()
            .flat_map(|i| i.hash)
            .collect();
        loads(&history, &hashes).unwrap();
        let mut bad = hashes.clone();
        bad[12_345 * 32] ^= 1;
        assert_eq!(bad_version(loads(&history, &bad)), 12_346);
    }
}
