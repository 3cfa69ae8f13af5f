//! Events: the kind table, the canonical versioned encoding and history framing.
//!
//! Decoding never trusts its input: every length is checked against the bytes
//! that remain, and every failure names the byte offset and the event index.

use std::fmt;

use crate::canon::is_canonical_object;

/// The only encoding format version this crate writes and reads.
pub const FORMAT_VERSION: u8 = 1;

/// Bytes of the fixed part of an encoded event, before the step bytes.
const FIXED_HEADER: usize = 1 + 2 + 8 + 4 + 4;

macro_rules! kinds {
    ($($variant:ident = $code:literal, $name:literal;)*) => {
        /// What happened. The numeric codes are stable and never reused.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u16)]
        pub enum EventKind {
            $(
                #[doc = $name]
                $variant = $code,
            )*
        }

        impl EventKind {
            /// Every kind, in code order.
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant,)*];

            /// The kind with this stable code.
            pub fn from_code(code: u16) -> Option<Self> {
                match code {
                    $($code => Some(EventKind::$variant),)*
                    _ => None,
                }
            }

            /// The kind with this snake_case name.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($name => Some(EventKind::$variant),)*
                    _ => None,
                }
            }

            /// The snake_case name of this kind.
            pub fn name(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $name,)*
                }
            }
        }
    };
}

kinds! {
    WorkflowStarted = 1, "workflow_started";
    WorkflowCompleted = 2, "workflow_completed";
    WorkflowFailed = 3, "workflow_failed";
    WorkflowCancelled = 4, "workflow_cancelled";
    WorkflowTimedOut = 5, "workflow_timed_out";
    ActivityScheduled = 6, "activity_scheduled";
    ActivityStarted = 7, "activity_started";
    ActivityCompleted = 8, "activity_completed";
    ActivityFailed = 9, "activity_failed";
    ActivityRetryScheduled = 10, "activity_retry_scheduled";
    DecisionMade = 11, "decision_made";
    TimerScheduled = 12, "timer_scheduled";
    TimerFired = 13, "timer_fired";
    TimerCancelled = 14, "timer_cancelled";
    SignalReceived = 15, "signal_received";
    ExternalEventReceived = 16, "external_event_received";
    ChildWorkflowStarted = 17, "child_workflow_started";
    ChildWorkflowCompleted = 18, "child_workflow_completed";
    ChildWorkflowFailed = 19, "child_workflow_failed";
    CompensationStarted = 20, "compensation_started";
    CompensationStepCompleted = 21, "compensation_step_completed";
    CompensationCompleted = 22, "compensation_completed";
    SnapshotTaken = 23, "snapshot_taken";
    StepStarted = 24, "step_started";
    StepCompleted = 25, "step_completed";
    StepFailed = 26, "step_failed";
    StepCancelled = 27, "step_cancelled";
    CompensationFailed = 28, "compensation_failed";
    WorkflowCompensated = 29, "workflow_compensated";
    WaitStarted = 30, "wait_started";
    EngineError = 31, "engine_error";
}

impl EventKind {
    /// The stable numeric code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// Whether this kind ends the workflow.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EventKind::WorkflowCompleted
                | EventKind::WorkflowFailed
                | EventKind::WorkflowCancelled
                | EventKind::WorkflowTimedOut
                | EventKind::WorkflowCompensated
        )
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why bytes could not be decoded (or a payload could not be encoded).
///
/// `offset` is the absolute byte offset in the input where decoding failed and
/// `index` the position of the event in the history or batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    pub message: String,
    pub offset: Option<u64>,
    pub index: Option<u64>,
}

impl DecodeError {
    /// An error at a known place.
    pub fn at(message: impl Into<String>, offset: usize, index: usize) -> Self {
        DecodeError {
            message: message.into(),
            offset: Some(offset as u64),
            index: Some(index as u64),
        }
    }

    /// An error about a payload that is not tied to a byte offset.
    pub fn msg(message: impl Into<String>) -> Self {
        DecodeError {
            message: message.into(),
            offset: None,
            index: None,
        }
    }

    /// The same error, attributed to the event at `index`.
    pub fn with_index(mut self, index: usize) -> Self {
        self.index = Some(index as u64);
        self
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        match (self.index, self.offset) {
            (Some(i), Some(o)) => write!(f, " (event {i}, byte offset {o})"),
            (Some(i), None) => write!(f, " (event {i})"),
            (None, Some(o)) => write!(f, " (byte offset {o})"),
            (None, None) => Ok(()),
        }
    }
}

impl std::error::Error for DecodeError {}

/// One event. `data` holds the canonical JSON text of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub timestamp: i64,
    pub step: String,
    pub attempt: u32,
    pub data: Box<str>,
}

/// A decoded event that borrows its step and payload from the encoded bytes:
/// what the reducer folds, without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub kind: EventKind,
    pub timestamp: i64,
    pub step: &'a str,
    pub attempt: u32,
    /// Canonical JSON text of an object.
    pub data: &'a str,
}

/// Canonical JSON of `bytes`: keys sorted by byte order, no whitespace,
/// serde_json number formatting. The value must be a JSON object.
pub fn canonicalize(bytes: &[u8]) -> Result<Box<str>, DecodeError> {
    if is_canonical_object(bytes) {
        // Checked above: valid UTF-8 JSON already in canonical form.
        if let Ok(text) = std::str::from_utf8(bytes) {
            return Ok(text.into());
        }
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| DecodeError::msg(format!("event data is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(DecodeError::msg("event data must be a JSON object"));
    }
    canonical_text(&value)
}

/// Canonical text of an already-parsed JSON value.
pub fn canonical_text(value: &serde_json::Value) -> Result<Box<str>, DecodeError> {
    serde_json::to_string(value)
        .map(String::into_boxed_str)
        .map_err(|e| DecodeError::msg(format!("cannot serialise JSON: {e}")))
}

impl Event {
    /// Builds an event from raw JSON payload bytes, canonicalising them.
    pub fn new(
        kind: EventKind,
        step: impl Into<String>,
        attempt: u32,
        data: &[u8],
        timestamp: i64,
    ) -> Result<Self, DecodeError> {
        Ok(Event {
            kind,
            timestamp,
            step: step.into(),
            attempt,
            data: canonicalize(data)?,
        })
    }

    /// Bytes of the canonical payload.
    pub fn data_bytes(&self) -> &[u8] {
        self.data.as_bytes()
    }

    /// The borrowed view the reducer folds.
    pub fn view(&self) -> EventRef<'_> {
        EventRef {
            kind: self.kind,
            timestamp: self.timestamp,
            step: &self.step,
            attempt: self.attempt,
            data: &self.data,
        }
    }

    /// Length of the canonical encoding.
    pub fn encoded_len(&self) -> usize {
        FIXED_HEADER + self.step.len() + 4 + self.data.len()
    }

    /// Appends the canonical encoding to `out`.
    ///
    /// Step and data lengths above `u32::MAX` cannot be framed; callers bound
    /// payloads far below that (see `StoreConfig::max_payload_bytes`).
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        let step_len = u32::try_from(self.step.len())
            .map_err(|_| DecodeError::msg("step path longer than 4 GiB"))?;
        let data = self.data.as_bytes();
        let data_len = u32::try_from(data.len())
            .map_err(|_| DecodeError::msg("event data longer than 4 GiB"))?;
        out.reserve(self.encoded_len());
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&self.kind.code().to_le_bytes());
        out.extend_from_slice(&self.timestamp.to_le_bytes());
        out.extend_from_slice(&self.attempt.to_le_bytes());
        out.extend_from_slice(&step_len.to_le_bytes());
        out.extend_from_slice(self.step.as_bytes());
        out.extend_from_slice(&data_len.to_le_bytes());
        out.extend_from_slice(data);
        Ok(())
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Decodes exactly one encoded event. `base` is the absolute offset of
    /// `bytes` in the surrounding input and `index` the event's position, both
    /// only used to locate errors.
    pub fn decode(bytes: &[u8], base: usize, index: usize) -> Result<Self, DecodeError> {
        EventRef::decode(bytes, base, index).map(|e| e.to_event())
    }
}

impl<'a> EventRef<'a> {
    /// An owned copy.
    pub fn to_event(&self) -> Event {
        Event {
            kind: self.kind,
            timestamp: self.timestamp,
            step: self.step.to_owned(),
            attempt: self.attempt,
            data: self.data.into(),
        }
    }

    /// Decodes exactly one encoded event, borrowing from `bytes` (see
    /// [`Event::decode`]). The payload must be canonical JSON.
    pub fn decode(bytes: &'a [u8], base: usize, index: usize) -> Result<Self, DecodeError> {
        Self::decode_with(bytes, base, index, true)
    }

    /// Decodes an event this process encoded and stored itself: the payload's
    /// canonical form was checked when it was built, so only the framing is
    /// checked here (the reducer still parses the payload).
    pub fn decode_trusted(bytes: &'a [u8], base: usize, index: usize) -> Result<Self, DecodeError> {
        Self::decode_with(bytes, base, index, false)
    }

    /// A well-formed event with its fixed fields read at once; `None` for
    /// anything else, which the field-by-field path then names.
    #[inline]
    fn decode_fast(bytes: &'a [u8], check_json: bool) -> Option<Self> {
        // format u8, kind u16, timestamp i64, attempt u32, step length u32
        let head: &[u8; 19] = bytes.get(..19)?.try_into().ok()?;
        if head[0] != FORMAT_VERSION {
            return None;
        }
        let kind = EventKind::from_code(u16::from_le_bytes([head[1], head[2]]))?;
        let timestamp = i64::from_le_bytes(head[3..11].try_into().ok()?);
        let attempt = u32::from_le_bytes(head[11..15].try_into().ok()?);
        let step_len = u32::from_le_bytes(head[15..19].try_into().ok()?) as usize;
        let step_end = step_len.checked_add(19)?;
        let step_bytes = bytes.get(19..step_end)?;
        let data_len = bytes.get(step_end..step_end.checked_add(4)?)?;
        let data_bytes = bytes.get(step_end + 4..)?;
        if u32::from_le_bytes(data_len.try_into().ok()?) as usize != data_bytes.len() {
            return None;
        }
        if check_json && !is_canonical_object(data_bytes) {
            return None;
        }
        // One UTF-8 check over step, data length and data together: the
        // length's four bytes are ASCII while the data is shorter than 128
        // bytes, and a slice of valid UTF-8 that starts and ends on char
        // boundaries is valid UTF-8 itself. Short events pay one check
        // instead of two; any other event checks its two parts apart.
        let (step, data) = match std::str::from_utf8(bytes.get(19..)?) {
            Ok(tail) => (tail.get(..step_len)?, tail.get(step_len + 4..)?),
            Err(_) => (
                std::str::from_utf8(step_bytes).ok()?,
                std::str::from_utf8(data_bytes).ok()?,
            ),
        };
        Some(EventRef {
            kind,
            timestamp,
            step,
            attempt,
            data,
        })
    }

    fn decode_with(
        bytes: &'a [u8],
        base: usize,
        index: usize,
        check_json: bool,
    ) -> Result<Self, DecodeError> {
        if let Some(event) = Self::decode_fast(bytes, check_json) {
            return Ok(event);
        }
        let mut r = Reader {
            bytes,
            pos: 0,
            base,
            index,
        };
        let version = r.u8("format version")?;
        if version != FORMAT_VERSION {
            return Err(r.err_back(1, format!("unknown event format version {version}")));
        }
        let code = r.u16("kind code")?;
        let kind = EventKind::from_code(code)
            .ok_or_else(|| r.err_back(2, format!("unknown event kind code {code}")))?;
        let timestamp = r.i64("timestamp")?;
        let attempt = r.u32("attempt")?;
        let step_len = r.u32("step length")? as usize;
        let step_at = r.pos;
        let step_bytes = r.take(step_len, "step")?;
        let step = std::str::from_utf8(step_bytes)
            .map_err(|e| r.err_abs(step_at + e.valid_up_to(), "step is not valid UTF-8"))?;
        let data_len = r.u32("data length")? as usize;
        let data_at = r.pos;
        let data_bytes = r.take(data_len, "data")?;
        if r.pos != bytes.len() {
            return Err(r.err_abs(r.pos, "trailing bytes after event"));
        }
        let canonical = !check_json || is_canonical_object(data_bytes);
        let data = match std::str::from_utf8(data_bytes) {
            Ok(text) if canonical => text,
            // The slow path only decides which error to report.
            _ => return Err(Self::data_error(data_bytes, data_at, &r)),
        };
        Ok(EventRef {
            kind,
            timestamp,
            step,
            attempt,
            data,
        })
    }

    fn data_error(data_bytes: &[u8], data_at: usize, r: &Reader<'_>) -> DecodeError {
        let value: serde_json::Value = match serde_json::from_slice(data_bytes) {
            Ok(v) => v,
            Err(e) => return r.err_abs(data_at, format!("event data is not valid JSON: {e}")),
        };
        if !value.is_object() {
            return r.err_abs(data_at, "event data must be a JSON object");
        }
        match canonical_text(&value) {
            Err(e) => r.err_abs(data_at, e.message),
            Ok(_) => r.err_abs(data_at, "event data is not canonical JSON"),
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    base: usize,
    index: usize,
}

impl<'a> Reader<'a> {
    fn err_abs(&self, pos: usize, message: impl Into<String>) -> DecodeError {
        DecodeError::at(message, self.base + pos, self.index)
    }

    fn err_back(&self, n: usize, message: impl Into<String>) -> DecodeError {
        self.err_abs(self.pos.saturating_sub(n), message)
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| {
                self.err_abs(
                    self.pos,
                    format!(
                        "truncated event: {what} needs {n} bytes, {} remain",
                        self.bytes.len() - self.pos
                    ),
                )
            })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], DecodeError> {
        let slice = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &str) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }
}

/// Iterates over the framed events of a history: `(offset, encoded bytes)`,
/// where `offset` is the position of the event's length prefix.
pub struct Frames<'a> {
    bytes: &'a [u8],
    pos: usize,
    index: usize,
    failed: bool,
}

/// The framed events of `history`, without decoding them.
pub fn frames(history: &[u8]) -> Frames<'_> {
    Frames {
        bytes: history,
        pos: 0,
        index: 0,
        failed: false,
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<(usize, &'a [u8]), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let start = self.pos;
        let rest = self.bytes.get(start..).filter(|r| !r.is_empty())?;
        let Some((len_bytes, tail)) = rest.split_first_chunk::<4>() else {
            self.failed = true;
            return Some(Err(DecodeError::at(
                format!(
                    "truncated history: length prefix needs 4 bytes, {} remain",
                    rest.len()
                ),
                start,
                self.index,
            )));
        };
        let len = u32::from_le_bytes(*len_bytes) as usize;
        let Some(body) = tail.get(..len) else {
            self.failed = true;
            return Some(Err(DecodeError::at(
                format!(
                    "truncated history: event needs {len} bytes, {} remain",
                    tail.len()
                ),
                start,
                self.index,
            )));
        };
        // Within `bytes`: `body` ends at or before its end.
        self.pos = start + 4 + len;
        self.index += 1;
        Some(Ok((start, body)))
    }
}

/// Appends one framed event (`u32` length prefix + encoding) to `out`.
pub fn frame_into(encoded: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
    let len =
        u32::try_from(encoded.len()).map_err(|_| DecodeError::msg("event longer than 4 GiB"))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(encoded);
    Ok(())
}

/// Decodes a whole history.
pub fn decode_history(history: &[u8]) -> Result<Vec<Event>, DecodeError> {
    let mut out = Vec::new();
    for (index, frame) in frames(history).enumerate() {
        let (offset, body) = frame?;
        out.push(Event::decode(body, offset + 4, index)?);
    }
    Ok(out)
}

/// Frames a list of events into a history.
pub fn encode_history<'e>(
    events: impl IntoIterator<Item = &'e Event>,
) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for event in events {
        buf.clear();
        event.encode_into(&mut buf)?;
        frame_into(&buf, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{EventKind, EventRef, FORMAT_VERSION};
    use proptest::prelude::*;

    fn raw(step: &[u8], data: &[u8]) -> Vec<u8> {
        let mut out = vec![FORMAT_VERSION];
        out.extend_from_slice(&EventKind::TimerFired.code().to_le_bytes());
        out.extend_from_slice(&7i64.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(step.len() as u32).to_le_bytes());
        out.extend_from_slice(step);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        out
    }

    /// Steps and data that mix ASCII, multi-byte characters and stray bytes,
    /// of lengths around the 128 bytes where the data length stops being
    /// ASCII.
    fn text() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"a".to_vec()),
            Just("\u{e9}".as_bytes().to_vec()),
            Just("\u{1f600}".as_bytes().to_vec()),
            Just(vec![0xc3]),
            Just(vec![0xa9]),
            Just(vec![0xff]),
        ];
        prop::collection::vec(piece, 0..90).prop_map(|p| p.concat())
    }

    proptest! {
        /// Decoding accepts exactly the events whose step and data are each
        /// valid UTF-8 (the data as a JSON string value here), and reads
        /// them back unchanged, whatever the bytes between them.
        #[test]
        fn decode_checks_step_and_data_apart(step in text(), inner in text()) {
            let mut data = br#"{"k":""#.to_vec();
            data.extend(inner.iter().filter(|b| **b != b'"' && **b != b'\\'));
            data.extend_from_slice(br#""}"#);
            let bytes = raw(&step, &data);
            let valid = std::str::from_utf8(&step).is_ok() && std::str::from_utf8(&data).is_ok();
            match EventRef::decode(&bytes, 0, 0) {
                Ok(event) => {
                    prop_assert!(valid);
                    prop_assert_eq!(event.step.as_bytes(), &step[..]);
                    prop_assert_eq!(event.data.as_bytes(), &data[..]);
                }
                Err(_) => prop_assert!(!valid),
            }
        }
    }

    #[test]
    fn a_step_completed_into_a_character_by_the_length_bytes_is_refused() {
        // The step ends with a lead byte and the data length (169 = 0xa9)
        // supplies its continuation: the bytes from the step on are valid
        // UTF-8 together, the step alone is not.
        let data = format!(r#"{{"k":"{}"}}"#, "a".repeat(169 - 8));
        assert_eq!(data.len(), 169);
        let bytes = raw(&[b'0', 0xc3], data.as_bytes());
        assert!(std::str::from_utf8(&bytes[19..]).is_ok());
        let err = EventRef::decode(&bytes, 0, 0).expect_err("a broken step decodes");
        assert!(err.to_string().contains("step is not valid UTF-8"), "{err}");
    }
}
