//! [`PairList`]: name/value pairs kept in their wire encoding.
//!
//! A `REQUEST` carries two lists of pairs (the app's options and the CGI
//! environment), some fifty in all. Decoding each name and value into its
//! own `Vec` costs a hundred allocations per request in the agent, which
//! only compares the options with the last request's and passes the
//! environment on to the app untouched. A `PairList` holds the pairs in
//! one buffer, exactly as they travel, so decoding is one validated copy,
//! comparing is `memcmp`, and re-encoding is a copy of the same bytes.

use std::fmt;

use super::Error;

/// Name/value pairs in order, names may repeat. The buffer holds each pair
/// as `u32` length + name, `u32` length + value (the wire's `pairs` field
/// without its leading count). Every constructor checks or writes that
/// layout, so iterating never fails.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PairList {
    /// How many pairs `bytes` holds.
    count: u32,
    /// The encoded pairs.
    bytes: Vec<u8>,
}

impl PairList {
    /// An empty list.
    pub fn new() -> Self {
        PairList::default()
    }

    /// An empty list with room for `bytes` bytes of names and values.
    pub fn with_capacity(bytes: usize) -> Self {
        PairList {
            count: 0,
            bytes: Vec::with_capacity(bytes),
        }
    }

    /// Appends one pair. A name or value longer than `u32::MAX` bytes is
    /// far beyond any frame's limit: its length saturates and the peer
    /// rejects the frame.
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        for field in [name, value] {
            let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
            self.bytes.extend_from_slice(&len.to_be_bytes());
            self.bytes.extend_from_slice(field);
        }
        self.count = self.count.saturating_add(1);
    }

    /// The number of pairs.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The pairs in order, borrowed.
    pub fn iter(&self) -> Iter<'_> {
        Iter { rest: &self.bytes }
    }

    /// The value of the last pair named `name` (a later pair overrides an
    /// earlier one, as `SetEnv` overrides a computed variable).
    pub fn last(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter()
            .filter(|(n, _)| *n == name)
            .last()
            .map(|(_, value)| value)
    }

    /// The pairs as owned `Vec`s, for code that keeps them.
    pub fn to_pairs(&self) -> super::Pairs {
        self.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect()
    }

    /// Size of the wire field: the count and the pairs.
    pub(crate) fn encoded_len(&self) -> usize {
        4 + self.bytes.len()
    }

    /// Appends the wire field: the count, then the pairs.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.bytes);
    }

    /// Takes a `pairs` field from the front of `rest`. Every length is
    /// checked against the bytes that remain before anything is copied.
    pub(crate) fn decode(rest: &mut &[u8]) -> Result<Self, Error> {
        let (count, mut cursor) = split_u32(rest).ok_or(Error::Malformed("truncated field"))?;
        // Each pair takes at least its two 4-byte lengths.
        if count as usize > cursor.len() / 8 {
            return Err(Error::Malformed("pair count exceeds the payload"));
        }
        let start = cursor;
        for _ in 0..count * 2 {
            let (len, after) = split_u32(cursor).ok_or(Error::Malformed("truncated field"))?;
            if len as usize > after.len() {
                return Err(Error::Malformed("bytes length exceeds the payload"));
            }
            cursor = &after[len as usize..];
        }
        let used = start.len() - cursor.len();
        *rest = cursor;
        Ok(PairList {
            count,
            bytes: start[..used].to_vec(),
        })
    }
}

/// A big-endian `u32` from the front of `b`, and what follows it.
fn split_u32(b: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = b.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*head), rest))
}

/// The pairs of a [`PairList`], borrowed, in order.
pub struct Iter<'a> {
    rest: &'a [u8],
}

impl<'a> Iter<'a> {
    /// One length-prefixed field (the layout was checked on construction).
    fn field(&mut self) -> &'a [u8] {
        let (len, after) = split_u32(self.rest).expect("a PairList holds whole fields");
        let (field, rest) = after.split_at(len as usize);
        self.rest = rest;
        field
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let name = self.field();
        Some((name, self.field()))
    }
}

impl<'a> IntoIterator for &'a PairList {
    type Item = (&'a [u8], &'a [u8]);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl<N: AsRef<[u8]>, V: AsRef<[u8]>> FromIterator<(N, V)> for PairList {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(pairs: I) -> Self {
        let mut list = PairList::new();
        for (name, value) in pairs {
            list.push(name.as_ref(), value.as_ref());
        }
        list
    }
}

/// Shows the pairs as text (lossy), not the encoding.
impl fmt::Debug for PairList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.iter()
                    .map(|(n, v)| (String::from_utf8_lossy(n), String::from_utf8_lossy(v))),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushed_pairs_come_back_in_order_with_repeats() {
        let list: PairList = [("A", "1"), ("B", ""), ("A", "2")].into_iter().collect();
        assert_eq!(list.len(), 3);
        let got: Vec<_> = list.iter().collect();
        assert_eq!(got, vec![(&b"A"[..], &b"1"[..]), (b"B", b""), (b"A", b"2")]);
    }

    #[test]
    fn decode_reads_what_encode_wrote_and_leaves_the_rest() {
        let list: PairList = [("NAME", "value"), ("", "x")].into_iter().collect();
        let mut wire = Vec::new();
        list.encode(&mut wire);
        assert_eq!(wire.len(), list.encoded_len());
        wire.extend_from_slice(b"tail");
        let mut rest = &wire[..];
        assert_eq!(PairList::decode(&mut rest).unwrap(), list);
        assert_eq!(rest, b"tail");
    }

    #[test]
    fn decode_refuses_lying_counts_and_lengths() {
        // A count larger than the bytes could hold.
        let mut rest: &[u8] = &[0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(PairList::decode(&mut rest).is_err());
        // A name length beyond the payload.
        let mut rest: &[u8] = &[0, 0, 0, 1, 0, 0, 0, 200, 0, 0, 0, 0];
        assert!(PairList::decode(&mut rest).is_err());
        // A value length field cut short.
        let mut rest: &[u8] = &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut short: &[u8] = &rest[..11];
        assert!(PairList::decode(&mut short).is_err());
        assert!(PairList::decode(&mut rest).is_ok());
    }
}
