//! Helpers shared by the integration tests.

use itonami_core::event::frame_into;

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
