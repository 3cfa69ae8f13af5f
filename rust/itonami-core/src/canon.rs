//! A streaming check that JSON bytes are already canonical.
//!
//! serde_json parses the input and every token is re-serialised, the way
//! `serde_json::Value` would print it, into a scratch buffer; the input is
//! canonical when that transcript equals it byte for byte and every object's
//! keys are strictly increasing (a `Value` sorts keys and keeps one of each).
//! No `Value` tree is built, so the check allocates nothing once the scratch
//! buffer has grown.

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
    use super::is_canonical_object;

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
}
