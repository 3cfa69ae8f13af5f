//! The timer history both examples build: `workflow_started`, then timers of
//! 100 steps scheduled and fired in turn (the history of
//! `benches/test_core_bench.py`).

use itonami_core::{Event, EventKind};

/// Version `v >= 1` after the start: odd versions schedule a timer, even
/// ones fire it.
pub fn tick(v: u64) -> Event {
    let path = format!("0/{}", ((v - 1) / 2) % 100);
    if v % 2 == 1 {
        let data = format!(r#"{{"fire_at":{v}}}"#);
        Event::new(
            EventKind::TimerScheduled,
            path,
            0,
            data.as_bytes(),
            v as i64,
        )
        .unwrap()
    } else {
        Event::new(EventKind::TimerFired, path, 0, b"{}", v as i64).unwrap()
    }
}

/// Version 0's event.
pub fn start() -> Event {
    Event::new(
        EventKind::WorkflowStarted,
        "",
        0,
        br#"{"workflow_id":"wf","workflow_version":"1","inputs":{"n":1}}"#,
        0,
    )
    .unwrap()
}
