//! One-dimensional PostgreSQL arrays in the binary wire format.
//!
//! The PostgreSQL storage sends its bulk statements' array parameters in
//! binary. psycopg dumps a Python list into that format in Python, one
//! element at a time (`psycopg/types/array.py`), which was a tenth of a
//! worker's CPU in a profile. The format is small and fixed, so it is written
//! here by hand rather than through a driver: it is what PostgreSQL's
//! `array_send` produces and `array_recv` reads, all integers big-endian:
//!
//! ```text
//! int4 ndim          1 (0 for an empty array, which then ends after the oid)
//! int4 has_nulls     1 if any element is NULL, else 0
//! int4 element oid   int8 20, text 25, bytea 17, bool 16
//! int4 length        the number of elements   } once per dimension
//! int4 lower bound   1                        }
//! per element: int4 byte length (-1 for NULL, then no bytes), the element's
//!              binary form (int8: 8 bytes; text: UTF-8; bytea: raw; bool: 0/1)
//! ```
//!
//! Lengths on the wire are `int4`: an element or a whole array longer than
//! `i32::MAX` bytes is an [`ArrayError`], never a panic or a wrapped length.

use std::fmt;
use std::marker::PhantomData;

/// A value that can be an element of a binary array.
pub trait Element {
    /// The element type's oid (`pg_type.oid`).
    const OID: u32;
    /// The oid of the array type whose elements these are.
    const ARRAY_OID: u32;
    /// The length of [`Element::write_to`]'s output.
    fn encoded_len(&self) -> usize;
    /// Appends the element's binary form (the type's `typsend`).
    fn write_to(&self, out: &mut Vec<u8>);
}

impl Element for i64 {
    const OID: u32 = 20;
    const ARRAY_OID: u32 = 1016;
    fn encoded_len(&self) -> usize {
        8
    }
    fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
}

impl Element for bool {
    const OID: u32 = 16;
    const ARRAY_OID: u32 = 1000;
    fn encoded_len(&self) -> usize {
        1
    }
    fn write_to(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl Element for str {
    const OID: u32 = 25;
    const ARRAY_OID: u32 = 1009;
    fn encoded_len(&self) -> usize {
        self.len()
    }
    fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

impl Element for [u8] {
    const OID: u32 = 17;
    const ARRAY_OID: u32 = 1001;
    fn encoded_len(&self) -> usize {
        self.len()
    }
    fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

/// An array that the wire format cannot carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArrayError {
    /// Element `index` is `len` bytes, more than an `int4` length allows.
    ElementTooLarge { index: usize, len: usize },
    /// The array would exceed `i32::MAX` bytes from element `index` on.
    ArrayTooLarge { index: usize },
}

impl fmt::Display for ArrayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArrayError::ElementTooLarge { index, len } => write!(
                f,
                "array element {index} is {len} bytes, more than {} allowed",
                i32::MAX
            ),
            ArrayError::ArrayTooLarge { index } => {
                write!(f, "the array exceeds {} bytes at element {index}", i32::MAX)
            }
        }
    }
}

impl std::error::Error for ArrayError {}

/// The header of a non-empty array: ndim, has_nulls, oid, length, lower bound.
const HEADER: usize = 20;
/// The header of an empty array: ndim 0, has_nulls 0, oid.
const EMPTY_HEADER: usize = 12;

/// Builds one array element by element; [`ArrayBuilder::finish`] writes the
/// header. Any `T: Element` works: `i64`, `bool`, `str`, `[u8]`.
pub struct ArrayBuilder<T: Element + ?Sized> {
    buf: Vec<u8>,
    count: usize,
    has_nulls: bool,
    /// The largest size the array may reach (`i32::MAX`; smaller in tests).
    limit: usize,
    _element: PhantomData<fn(&T)>,
}

impl<T: Element + ?Sized> ArrayBuilder<T> {
    /// A builder with room for `elements` elements of `per_element` bytes.
    pub fn with_capacity(elements: usize, per_element: usize) -> Self {
        let room = elements
            .saturating_mul(per_element.saturating_add(4))
            .saturating_add(HEADER)
            .min(1 << 20);
        Self::with_limit(room, i32::MAX as usize)
    }

    fn with_limit(room: usize, limit: usize) -> Self {
        let mut buf = Vec::with_capacity(room);
        buf.resize(HEADER, 0);
        ArrayBuilder {
            buf,
            count: 0,
            has_nulls: false,
            limit,
            _element: PhantomData,
        }
    }

    /// The number of elements pushed so far.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether nothing was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends one element; `None` is a NULL.
    pub fn push(&mut self, value: Option<&T>) -> Result<(), ArrayError> {
        let index = self.count;
        let len = value.map_or(0, T::encoded_len);
        if len > self.limit {
            return Err(ArrayError::ElementTooLarge { index, len });
        }
        let total = self
            .buf
            .len()
            .checked_add(4)
            .and_then(|n| n.checked_add(len))
            .filter(|&n| n <= self.limit)
            .ok_or(ArrayError::ArrayTooLarge { index })?;
        // `len <= limit <= i32::MAX`: the conversion cannot fail.
        let wire_len =
            i32::try_from(len).map_err(|_| ArrayError::ElementTooLarge { index, len })?;
        self.buf.reserve(total - self.buf.len());
        match value {
            Some(v) => {
                self.buf.extend_from_slice(&wire_len.to_be_bytes());
                v.write_to(&mut self.buf);
            }
            None => {
                self.buf.extend_from_slice(&(-1i32).to_be_bytes());
                self.has_nulls = true;
            }
        }
        self.count = index + 1;
        Ok(())
    }

    /// The array's bytes.
    pub fn finish(mut self) -> Vec<u8> {
        let mut header = [0u8; HEADER];
        header[8..12].copy_from_slice(&T::OID.to_be_bytes());
        if self.count == 0 {
            return header[..EMPTY_HEADER].to_vec();
        }
        // Every element took at least 4 bytes of an array of at most
        // `i32::MAX` bytes, so the count fits an int4.
        let count = i32::try_from(self.count).unwrap_or(i32::MAX);
        header[0..4].copy_from_slice(&1i32.to_be_bytes());
        header[4..8].copy_from_slice(&i32::from(self.has_nulls).to_be_bytes());
        header[12..16].copy_from_slice(&count.to_be_bytes());
        header[16..20].copy_from_slice(&1i32.to_be_bytes());
        self.buf[..HEADER].copy_from_slice(&header);
        self.buf
    }
}

/// Encodes `values` (`None` = NULL) as one array of `T`.
pub fn encode<'a, T, I>(values: I) -> Result<Vec<u8>, ArrayError>
where
    T: Element + ?Sized + 'a,
    I: IntoIterator<Item = Option<&'a T>>,
{
    let values = values.into_iter();
    let mut builder = ArrayBuilder::<T>::with_capacity(values.size_hint().0, 8);
    for v in values {
        builder.push(v)?;
    }
    Ok(builder.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn be(n: i32) -> [u8; 4] {
        n.to_be_bytes()
    }

    fn header(has_nulls: i32, oid: i32, len: i32) -> Vec<u8> {
        [be(1), be(has_nulls), be(oid), be(len), be(1)].concat()
    }

    #[test]
    fn int8_layout() {
        let got = encode::<i64, _>([Some(&1), None, Some(&i64::MIN), Some(&-1)]).unwrap();
        let mut want = header(1, 20, 4);
        want.extend_from_slice(&be(8));
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend_from_slice(&be(-1));
        want.extend_from_slice(&be(8));
        want.extend_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&be(8));
        want.extend_from_slice(&[0xff; 8]);
        assert_eq!(got, want);
    }

    #[test]
    fn text_layout() {
        let got = encode::<str, _>([Some("ab"), Some(""), Some("é")]).unwrap();
        let mut want = header(0, 25, 3);
        want.extend_from_slice(&be(2));
        want.extend_from_slice(b"ab");
        want.extend_from_slice(&be(0));
        want.extend_from_slice(&be(2));
        want.extend_from_slice(&[0xc3, 0xa9]);
        assert_eq!(got, want);
    }

    #[test]
    fn bytea_layout() {
        let got = encode::<[u8], _>([None, Some(&[0u8, 255][..])]).unwrap();
        let mut want = header(1, 17, 2);
        want.extend_from_slice(&be(-1));
        want.extend_from_slice(&be(2));
        want.extend_from_slice(&[0, 255]);
        assert_eq!(got, want);
    }

    #[test]
    fn bool_layout() {
        let got = encode::<bool, _>([Some(&true), Some(&false), None]).unwrap();
        let mut want = header(1, 16, 3);
        want.extend_from_slice(&be(1));
        want.push(1);
        want.extend_from_slice(&be(1));
        want.push(0);
        want.extend_from_slice(&be(-1));
        assert_eq!(got, want);
    }

    #[test]
    fn only_nulls() {
        let got = encode::<str, _>([None, None]).unwrap();
        let want = [header(1, 25, 2), be(-1).to_vec(), be(-1).to_vec()].concat();
        assert_eq!(got, want);
    }

    #[test]
    fn empty_arrays_have_no_dimension() {
        for (got, oid) in [
            (encode::<i64, _>([]).unwrap(), 20),
            (encode::<str, _>([]).unwrap(), 25),
            (encode::<[u8], _>([]).unwrap(), 17),
            (encode::<bool, _>([]).unwrap(), 16),
        ] {
            assert_eq!(got, [be(0), be(0), be(oid)].concat());
        }
    }

    #[test]
    fn array_oids() {
        assert_eq!(i64::ARRAY_OID, 1016);
        assert_eq!(str::ARRAY_OID, 1009);
        assert_eq!(<[u8]>::ARRAY_OID, 1001);
        assert_eq!(bool::ARRAY_OID, 1000);
    }

    #[test]
    fn an_element_above_the_limit_is_an_error() {
        let mut b = ArrayBuilder::<[u8]>::with_limit(0, 40);
        b.push(Some(&[0u8; 4][..])).unwrap();
        assert_eq!(
            b.push(Some(&[0u8; 41][..])),
            Err(ArrayError::ElementTooLarge { index: 1, len: 41 })
        );
        // Nothing was written: the builder still holds one element.
        assert_eq!(b.len(), 1);
        assert_eq!(b.finish().len(), HEADER + 8);
    }

    #[test]
    fn an_array_above_the_limit_is_an_error() {
        let mut b = ArrayBuilder::<str>::with_limit(0, HEADER + 10);
        b.push(Some("abcd")).unwrap(); // 28 bytes
        assert_eq!(
            b.push(Some("")),
            Err(ArrayError::ArrayTooLarge { index: 1 })
        );
        assert_eq!(b.push(None), Err(ArrayError::ArrayTooLarge { index: 1 }));
        let mut exact = ArrayBuilder::<str>::with_limit(0, HEADER + 10);
        exact.push(Some("abcdef")).unwrap(); // exactly the limit
        assert!(ArrayError::ArrayTooLarge { index: 1 }
            .to_string()
            .contains("element 1"));
    }

    #[test]
    fn huge_lengths_do_not_wrap() {
        // The limit is i32::MAX: an element claiming more is refused before
        // anything is written or allocated.
        struct Huge;
        impl Element for Huge {
            const OID: u32 = 17;
            const ARRAY_OID: u32 = 1001;
            fn encoded_len(&self) -> usize {
                usize::MAX
            }
            fn write_to(&self, _: &mut Vec<u8>) {
                unreachable!("never written")
            }
        }
        let mut b = ArrayBuilder::<Huge>::with_capacity(1, 8);
        assert_eq!(
            b.push(Some(&Huge)),
            Err(ArrayError::ElementTooLarge {
                index: 0,
                len: usize::MAX
            })
        );
    }

    /// Reads an array back (the layout above), for the property test.
    fn decode(bytes: &[u8]) -> (u32, Vec<Option<Vec<u8>>>) {
        let int = |at: usize| i32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        let ndim = int(0);
        let oid = int(8) as u32;
        if ndim == 0 {
            assert_eq!(int(4), 0);
            assert_eq!(bytes.len(), EMPTY_HEADER);
            return (oid, vec![]);
        }
        assert_eq!(ndim, 1);
        assert_eq!(int(16), 1);
        let n = int(12) as usize;
        let mut at = HEADER;
        let mut out = Vec::new();
        for _ in 0..n {
            let len = int(at);
            at += 4;
            if len < 0 {
                assert_eq!(len, -1);
                out.push(None);
            } else {
                out.push(Some(bytes[at..at + len as usize].to_vec()));
                at += len as usize;
            }
        }
        assert_eq!(at, bytes.len());
        assert_eq!(int(4) == 1, out.iter().any(Option::is_none));
        (oid, out)
    }

    proptest! {
        #[test]
        fn int8_round_trips(values in proptest::collection::vec(proptest::option::of(any::<i64>()), 0..40)) {
            let (oid, got) = decode(&encode::<i64, _>(values.iter().map(Option::as_ref)).unwrap());
            prop_assert_eq!(oid, 20);
            let want: Vec<_> = values.iter().map(|v| v.map(|v| v.to_be_bytes().to_vec())).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn text_round_trips(values in proptest::collection::vec(proptest::option::of(any::<String>()), 0..40)) {
            let (oid, got) = decode(&encode::<str, _>(values.iter().map(|v| v.as_deref())).unwrap());
            prop_assert_eq!(oid, 25);
            let want: Vec<_> = values.iter().map(|v| v.as_ref().map(|s| s.as_bytes().to_vec())).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn bytea_round_trips(values in proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)), 0..40)) {
            let (oid, got) = decode(&encode::<[u8], _>(values.iter().map(|v| v.as_deref())).unwrap());
            prop_assert_eq!(oid, 17);
            prop_assert_eq!(got, values);
        }

        #[test]
        fn bool_round_trips(values in proptest::collection::vec(proptest::option::of(any::<bool>()), 0..40)) {
            let (oid, got) = decode(&encode::<bool, _>(values.iter().map(Option::as_ref)).unwrap());
            prop_assert_eq!(oid, 16);
            let want: Vec<_> = values.iter().map(|v| v.map(|b| vec![u8::from(b)])).collect();
            prop_assert_eq!(got, want);
        }
    }
}
