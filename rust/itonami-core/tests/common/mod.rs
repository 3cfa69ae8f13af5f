//! Helpers shared by the integration tests.

use itonami_core::event::frame_into;
use itonami_core::{InclusionProof, StoreError};

/// Frames encoded events into a history.
pub fn join(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        frame_into(p, &mut out).expect("frames");
    }
    out
}

/// Asserts that `rejects` refuses the history after any single drop,
/// duplication or swap of `parts` (the stored hashes staying as they are).
pub fn assert_reorders_rejected(parts: &[Vec<u8>], rejects: impl Fn(&[u8]) -> bool) {
    let n = parts.len();
    for i in 0..n {
        let mut dropped = parts.to_vec();
        dropped.remove(i);
        assert!(rejects(&join(&dropped)), "drop {i}");
        let mut dup = parts.to_vec();
        dup.insert(i, parts[i].clone());
        assert!(rejects(&join(&dup)), "duplicate {i}");
        for j in i + 1..n {
            let mut swapped = parts.to_vec();
            swapped.swap(i, j);
            if swapped != parts {
                assert!(rejects(&join(&swapped)), "swap {i} {j}");
            }
        }
    }
}

/// Asserts that `load` refuses every single-bit flip (low and high bit) of
/// every byte of `history`, and that a flip in the stored hash of version
/// `v` is reported as damage of exactly version `v`.
pub fn assert_flips_rejected(
    history: &[u8],
    hashes: &[u8],
    load: impl Fn(&[u8], &[u8]) -> Result<(), StoreError>,
) {
    assert!(load(history, hashes).is_ok(), "the untouched chain loads");
    for i in 0..history.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = history.to_vec();
            bad[i] ^= bit;
            assert!(load(&bad, hashes).is_err(), "flip at byte {i} undetected");
        }
    }
    for i in 0..hashes.len() {
        let mut bad = hashes.to_vec();
        bad[i] ^= 1;
        match load(history, &bad) {
            Err(StoreError::Integrity { version, .. }) => {
                assert_eq!(version, (i / 32) as u64 + 1, "hash flip at {i}")
            }
            other => panic!("hash flip at {i} undetected: {other:?}"),
        }
    }
}

/// Asserts that no single-bit flip (low and high bit) of any byte of a
/// serialised proof gives a proof that decodes and leads to `head`.
pub fn assert_proof_flips_fail(bytes: &[u8], head: &[u8]) {
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = bytes.to_vec();
            bad[i] ^= bit;
            let ok = InclusionProof::from_bytes(&bad)
                .map(|p| p.verify(head))
                .unwrap_or(false);
            assert!(!ok, "proof byte {i} flipped ({bit:#04x}) undetected");
        }
    }
}
