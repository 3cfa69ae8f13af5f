//! The core of itonami: the event codec, the one reducer, the MVCC version
//! store with its Merkle chain, snapshots and inclusion proofs, and the binary
//! PostgreSQL arrays the PostgreSQL storage sends. No Python here;
//! `itonami-py` binds it as `itonami._core`.
//!
//! The contract with the Python engine is `docs/core-contract.md`.

pub mod canon;
pub mod event;
pub mod merkle;
pub mod pgarray;
pub mod proof;
pub mod snapshot;
pub mod state;
pub mod store;

pub use event::{decode_history, encode_history, DecodeError, Event, EventKind, EventRef};
pub use merkle::{Hash, MerkleTree};
pub use proof::InclusionProof;
pub use state::{apply, ExecutionState, HashedState, ReduceError, Status, StepStatus};
pub use store::{
    replay, Appended, StoreConfig, StoreError, VerifyReport, VersionInfo, VersionStore,
};
