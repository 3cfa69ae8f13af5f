//! Heap bytes requested per small idle execution (`cargo run --release
//! --example small_memory`): a counting allocator, so the figure excludes
//! allocator overhead and is not disturbed by memory freed earlier.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

mod common;

use itonami_core::{Event, EventKind, StoreConfig, VersionStore};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static BLOCKS: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        BLOCKS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        BLOCKS.fetch_sub(1, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    println!(
        "sizes: ExecutionState {} StepState {} Compensation {}",
        std::mem::size_of::<itonami_core::ExecutionState>(),
        std::mem::size_of::<itonami_core::state::StepState>(),
        std::mem::size_of::<itonami_core::state::Compensation>()
    );
    let count = 10_000isize;
    let def = "d".repeat(64);
    let data = format!(
        r#"{{"definition_hash":"{def}","inputs":{{}},"workflow_id":"wf","workflow_version":"1"}}"#
    );
    let ids: Vec<String> = (0..count).map(|i| format!("exec-{i:08}")).collect();
    let store = VersionStore::default();
    let (bytes, blocks) = (LIVE.load(Ordering::Relaxed), BLOCKS.load(Ordering::Relaxed));
    for id in &ids {
        let a = Event::new(EventKind::WorkflowStarted, "", 0, data.as_bytes(), 1).unwrap();
        let b = Event::new(
            EventKind::WaitStarted,
            "0",
            0,
            br#"{"kind":"signal","name":"go"}"#,
            2,
        )
        .unwrap();
        store.append(id, 0, a).unwrap();
        store.append(id, 1, b).unwrap();
    }
    let bytes = LIVE.load(Ordering::Relaxed) - bytes;
    let blocks = BLOCKS.load(Ordering::Relaxed) - blocks;
    println!(
        "small execution: {} heap bytes in {} blocks each (plus ~16 bytes of malloc overhead per block)",
        bytes / count,
        blocks as f64 / count as f64
    );

    // The heap per stored version of one long execution (the timer history of
    // `perf`), with no snapshots and with one every 1,000 and 250 versions:
    // what denser snapshots cost for a faster `state_at_tx`.
    let versions = 200_000u64;
    for every in [0u64, 1000, 250] {
        let before = LIVE.load(Ordering::Relaxed);
        let store = VersionStore::new(StoreConfig {
            snapshot_every: every,
            snapshot_retention: 0,
            ..StoreConfig::default()
        });
        store.append("big", 0, common::start()).unwrap();
        let mut v = 1;
        while v < versions {
            let batch: Vec<Event> = (v..(v + 1000).min(versions)).map(common::tick).collect();
            store.append_batch("big", v, &batch).unwrap();
            v += batch.len() as u64;
        }
        let bytes = LIVE.load(Ordering::Relaxed) - before;
        println!(
            "long execution, a snapshot every {every} versions: {:.1} heap bytes per version",
            bytes as f64 / versions as f64
        );
        drop(store);
    }
}
