//! A streaming check that JSON bytes are already canonical.
//!
//! serde_json parses the input and every token is re-serialised, the way
//! `serde_json::Value` would print it, into a scratch buffer; the input is
//! canonical when that transcript equals it byte for byte and every object's
//! keys are strictly increasing (a `Value` sorts keys and keeps one of each).
//! No `Value` tree is built, so the check allocates nothing once the scratch
//! buffer has grown.
//!
//! Most payloads are in a *plain* form whose canonical spelling can be told
//! from the bytes alone: strings without escapes, integers of at most 18
//! digits, no floats. [`plainly_canonical`] scans those in one pass without
//! parsing anything into values, and leaves every other input to the
//! transcript. It is written here because no JSON library answers "are these
//! bytes exactly serde_json's sorted output" without re-printing them.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Serializer as _;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Whether `bytes` is a JSON object in canonical form (sorted keys, no
/// insignificant whitespace, serde_json number and string formatting).
pub fn is_canonical_object(bytes: &[u8]) -> bool {
    if bytes == b"{}" {
        return true;
    }
    if bytes.first() != Some(&b'{') {
        return false;
    }
    if plainly_canonical(bytes) {
        return true;
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut out) => check(bytes, &mut out),
        Err(_) => check(bytes, &mut Vec::with_capacity(bytes.len())),
    })
}

fn check(bytes: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let ok = Transcribe { out: &mut *out }.deserialize(&mut de).is_ok() && de.end().is_ok();
    let same = ok && out.as_slice() == bytes;
    if out.capacity() > 1 << 20 {
        *out = Vec::new();
    }
    same
}

/// Objects and arrays nested deeper than this are left to the transcript
/// (serde_json refuses nesting past 128 levels).
const PLAIN_DEPTH: u32 = 64;

/// Whether `bytes` is certainly one canonical JSON object in plain form
/// (see the module's documentation). `false` decides nothing: the input may
/// still be canonical in a form this scan does not read.
fn plainly_canonical(bytes: &[u8]) -> bool {
    // The scan below reads only ASCII structure; a non-ASCII byte can only
    // sit inside a string, where serde_json prints valid UTF-8 as it is.
    if !bytes.is_ascii() && std::str::from_utf8(bytes).is_err() {
        return false;
    }
    let mut scan = Plain { bytes, at: 0 };
    scan.object(1).is_some() && scan.at == bytes.len()
}

/// A cursor over plain canonical JSON; every method returns `None` as soon
/// as the input leaves the plain form.
struct Plain<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Plain<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let hit = self.peek() == Some(byte);
        if hit {
            self.at += 1;
        }
        hit
    }

    fn value(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => self.string().map(drop),
            b't' => self.word(b"true"),
            b'f' => self.word(b"false"),
            b'n' => self.word(b"null"),
            b'-' | b'0'..=b'9' => self.integer(),
            _ => None,
        }
    }

    fn object(&mut self, depth: u32) -> Option<()> {
        if depth > PLAIN_DEPTH || !self.eat(b'{') {
            return None;
        }
        if self.eat(b'}') {
            return Some(());
        }
        let mut prev: Option<&[u8]> = None;
        loop {
            // Without escapes a key's bytes are its text, and `str` orders
            // by bytes, as the transcript's check does.
            let key = self.string()?;
            if prev.is_some_and(|p| p >= key) || !self.eat(b':') {
                return None;
            }
            prev = Some(key);
            self.value(depth)?;
            if self.eat(b'}') {
                return Some(());
            }
            if !self.eat(b',') {
                return None;
            }
        }
    }

    fn array(&mut self, depth: u32) -> Option<()> {
        if depth > PLAIN_DEPTH || !self.eat(b'[') {
            return None;
        }
        if self.eat(b']') {
            return Some(());
        }
        loop {
            self.value(depth)?;
            if self.eat(b']') {
                return Some(());
            }
            if !self.eat(b',') {
                return None;
            }
        }
    }

    /// A string without escapes or control characters; its contents.
    fn string(&mut self) -> Option<&'a [u8]> {
        if !self.eat(b'"') {
            return None;
        }
        let rest = self.bytes.get(self.at..)?;
        let len = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if rest.get(len) != Some(&b'"') {
            return None;
        }
        self.at += len + 1;
        rest.get(..len)
    }

    fn word(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at.checked_add(word.len())?;
        (self.bytes.get(self.at..end)? == word).then(|| self.at = end)
    }

    /// An integer serde_json prints as it reads it: no leading zero, no
    /// `-0`, at most 18 digits (so within `i64` and `u64`), no fraction or
    /// exponent.
    fn integer(&mut self) -> Option<()> {
        let negative = self.eat(b'-');
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        let digits = self.bytes.get(start..self.at)?;
        let first = *digits.first()?;
        if digits.len() > 18 || (first == b'0' && (negative || digits.len() > 1)) {
            return None;
        }
        match self.peek() {
            Some(b'.' | b'e' | b'E') => None,
            _ => Some(()),
        }
    }
}

struct Transcribe<'o> {
    out: &'o mut Vec<u8>,
}

impl Transcribe<'_> {
    fn json(&mut self) -> serde_json::Serializer<&mut Vec<u8>> {
        serde_json::Serializer::new(&mut *self.out)
    }
}

fn ser<E: de::Error>(r: Result<(), serde_json::Error>) -> Result<(), E> {
    r.map_err(|e| E::custom(e))
}

impl<'de> DeserializeSeed<'de> for Transcribe<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Transcribe<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(mut self, v: bool) -> Result<(), E> {
        ser(self.json().serialize_bool(v))
    }

    fn visit_i64<E: de::Error>(mut self, v: i64) -> Result<(), E> {
        ser(self.json().serialize_i64(v))
    }

    fn visit_u64<E: de::Error>(mut self, v: u64) -> Result<(), E> {
        ser(self.json().serialize_u64(v))
    }

    fn visit_f64<E: de::Error>(mut self, v: f64) -> Result<(), E> {
        // `Value` turns a non-finite float into null; serde_json prints null too.
        ser(self.json().serialize_f64(v))
    }

    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<(), E> {
        ser(self.json().serialize_str(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.out.push(b'[');
        let mut first = true;
        loop {
            let at = self.out.len();
            if !first {
                self.out.push(b',');
            }
            match seq.next_element_seed(Transcribe {
                out: &mut *self.out,
            })? {
                Some(()) => first = false,
                None => {
                    self.out.truncate(at);
                    break;
                }
            }
        }
        self.out.push(b']');
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.out.push(b'{');
        let mut prev: Option<Cow<'de, str>> = None;
        while let Some(key) = map.next_key_seed(Key)? {
            if prev.as_deref().is_some_and(|p| p >= key.as_ref()) {
                return Err(de::Error::custom("object keys are not strictly sorted"));
            }
            if prev.is_some() {
                self.out.push(b',');
            }
            ser(serde_json::Serializer::new(&mut *self.out).serialize_str(&key))?;
            self.out.push(b':');
            map.next_value_seed(Transcribe {
                out: &mut *self.out,
            })?;
            prev = Some(key);
        }
        self.out.push(b'}');
        Ok(())
    }
}

/// An object key, borrowed from the input when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::{is_canonical_object, plainly_canonical};
    use proptest::prelude::*;

    fn slow(bytes: &[u8]) -> bool {
        match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(v) => v.is_object() && serde_json::to_vec(&v).ok().as_deref() == Some(bytes),
            Err(_) => false,
        }
    }

    #[test]
    fn agrees_with_value_round_trip() {
        let cases: &[&str] = &[
            "{}",
            r#"{"a":1}"#,
            r#"{"b":1,"a":2}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"a":[1,2.5,-3,true,null,"x"],"b":{"c":{}}}"#,
            r#"{"a": 1}"#,
            r#" {"a":1}"#,
            r#"{"a":1} "#,
            r#"{"a":1.0}"#,
            r#"{"a":1e3}"#,
            r#"{"a":1000.0}"#,
            r#"{"a":-0}"#,
            r#"{"a":-0.0}"#,
            r#"{"a":0.1}"#,
            r#"{"a":1.7976931348623157e308}"#,
            r#"{"a":18446744073709551616}"#,
            r#"{"a":"\u00e9"}"#,
            "{\"a\":\"\u{e9}\"}",
            r#"{"a":"\n"}"#,
            r#"{"a":"\u000a"}"#,
            r#"{"a":"\/"}"#,
            r#"{"a\"b":1,"a":2}"#,
            r#"{"a":2,"a\"b":1}"#,
            r#"{"\u0061":1}"#,
            r#"{"":1,"a":[]}"#,
            r#"{"a":[],"b":[[]]}"#,
            "[1]",
            "1",
            "{",
            r#"{"a":1}x"#,
        ];
        for case in cases {
            assert_eq!(
                is_canonical_object(case.as_bytes()),
                slow(case.as_bytes()),
                "{case}"
            );
        }
    }

    #[test]
    fn the_plain_scan_decides_the_common_forms() {
        for plain in [
            r#"{"a":[1,-2,0,true,false,null,"x y/z"],"b":{},"c":[]}"#,
            r#"{"fire_at":123456789012345678}"#,
            "{\"z\":{\"a\":[[]]},\"\u{e9}\":\"\u{1f600}\"}",
        ] {
            assert!(plainly_canonical(plain.as_bytes()), "{plain}");
        }
        // Left to the transcript, which still finds them canonical.
        for other in [
            r#"{"a":1.5}"#,
            r#"{"a":"\n"}"#,
            r#"{"a":1234567890123456789}"#,
            r#"{"a":-9223372036854775808}"#,
        ] {
            assert!(!plainly_canonical(other.as_bytes()), "{other}");
            assert!(is_canonical_object(other.as_bytes()), "{other}");
        }
        // Never canonical, and never taken for it.
        for bad in [
            r#"{"a":01}"#,
            r#"{"a":-0}"#,
            r#"{"b":1,"a":2}"#,
            r#"{"a":1,"a":1}"#,
            r#"{"a":1,}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":tru}"#,
            r#"{"a":1}{}"#,
            "{\"a\":\"\x01\"}",
        ] {
            assert!(!plainly_canonical(bad.as_bytes()), "{bad}");
            assert!(!is_canonical_object(bad.as_bytes()), "{bad}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(70), "]".repeat(70));
        assert!(!plainly_canonical(deep.as_bytes()));
        assert!(is_canonical_object(deep.as_bytes()));
        assert!(!plainly_canonical(b"{\"a\":\"\xff\"}"));
    }

    fn json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1_000i64..1_000).prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[ -~\\PC\n\t\u{0}\u{7f}\u{e9}]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[a-c\"\\\\\u{e9}]{0,3}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Every object serde_json prints is canonical, by either path.
        #[test]
        fn printed_objects_are_canonical(value in json()) {
            let object = serde_json::json!({ "v": value, "w": [value.clone()] });
            let bytes = serde_json::to_vec(&object).unwrap();
            prop_assert!(is_canonical_object(&bytes));
            prop_assert!(slow(&bytes));
        }

        /// The plain scan says "canonical" only of what the transcript finds
        /// canonical, whatever is done to printed bytes.
        #[test]
        fn the_plain_scan_never_overrules_the_transcript(
            value in json(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 0..4),
        ) {
            let mut bytes = serde_json::to_vec(&serde_json::json!({ "v": value })).unwrap();
            for (at, byte, how) in edits {
                let at = at.index(bytes.len() + 1);
                match how {
                    0 => bytes.insert(at, byte),
                    1 if at < bytes.len() => { bytes.remove(at); }
                    _ if at < bytes.len() => bytes[at] = byte,
                    _ => {}
                }
            }
            if plainly_canonical(&bytes) {
                prop_assert!(slow(&bytes), "{:?}", String::from_utf8_lossy(&bytes));
            }
            prop_assert_eq!(is_canonical_object(&bytes), slow(&bytes));
        }
    }
}
