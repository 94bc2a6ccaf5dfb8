//! `Reader`: a bounds-checked big-endian reader shared by the object and
//! context decoders. Never panics; running short is a value (`Short`).

pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

/// The input ended while reading `what` at byte `offset`.
#[derive(Debug)]
pub(super) struct Short {
    pub what: &'static str,
    pub offset: usize,
    pub needed: usize,
    pub remaining: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, offset: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Short> {
        if n > self.bytes.len() {
            return Err(self.short(n, what));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        self.offset += n;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], Short> {
        match self.bytes.split_first_chunk::<N>() {
            Some((head, tail)) => {
                self.bytes = tail;
                self.offset += N;
                Ok(*head)
            }
            None => Err(self.short(N, what)),
        }
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, Short> {
        Ok(self.array::<1>(what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, Short> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, Short> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, Short> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn short(&self, needed: usize, what: &'static str) -> Short {
        Short {
            what,
            offset: self.offset,
            needed,
            remaining: self.bytes.len(),
        }
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn reads_big_endian_and_reports_short_input() {
        let mut r = Reader::new(&[1, 0, 2, 0, 0, 0, 3, 9]);
        assert_eq!(r.u8("a").unwrap(), 1);
        assert_eq!(r.u16("b").unwrap(), 2);
        assert_eq!(r.u32("c").unwrap(), 3);
        let short = r.u64("d").unwrap_err();
        assert_eq!(
            (short.what, short.offset, short.needed, short.remaining),
            ("d", 7, 8, 1)
        );
        assert_eq!(r.take(1, "e").unwrap(), &[9]);
        assert_eq!(r.remaining(), 0);
        assert!(r.take(1, "f").is_err());
    }
}
