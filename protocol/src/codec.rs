//! Primitive encodings shared by every message body. All integers little-endian.
//!
//! ```text
//! u8 u16 u32 u64 i64   fixed width, LE
//! str                  u16 length + UTF-8 bytes
//! tenant               u8 length (0 = none) + bytes
//! bytes                u32 length + bytes
//! ```
//!
//! [`Reader`] is bounds-checked and never allocates; every failure is `InvalidRequest`
//! with the name of the field that did not parse.

use crate::error::ProtocolError;

#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(ProtocolError::invalid(format!(
                "body ends inside {field} (needs {n} bytes, {} left)",
                self.buf.len()
            )));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], ProtocolError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub fn u8(&mut self, field: &str) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>(field)?[0])
    }
    pub fn u16(&mut self, field: &str) -> Result<u16, ProtocolError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    pub fn u32(&mut self, field: &str) -> Result<u32, ProtocolError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    pub fn u64(&mut self, field: &str) -> Result<u64, ProtocolError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    pub fn i64(&mut self, field: &str) -> Result<i64, ProtocolError> {
        Ok(i64::from_le_bytes(self.array(field)?))
    }
    pub fn bool(&mut self, field: &str) -> Result<bool, ProtocolError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(ProtocolError::invalid(format!(
                "{field}: {other} is not a boolean"
            ))),
        }
    }

    pub fn str(&mut self, field: &str) -> Result<&'a str, ProtocolError> {
        let len = usize::from(self.u16(field)?);
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes)
            .map_err(|_| ProtocolError::invalid(format!("{field} is not UTF-8")))
    }

    pub fn tenant(&mut self, field: &str) -> Result<Option<&'a [u8]>, ProtocolError> {
        let len = usize::from(self.u8(field)?);
        if len == 0 {
            return Ok(None);
        }
        self.take(len, field).map(Some)
    }

    pub fn bytes(&mut self, field: &str) -> Result<&'a [u8], ProtocolError> {
        let len = self.u32(field)? as usize;
        self.take(len, field)
    }

    /// A count of items that each take at least `item_len_min` bytes: checked against
    /// what is left, so a hostile count cannot make the caller allocate.
    pub fn count(&mut self, field: &str, item_len_min: usize) -> Result<usize, ProtocolError> {
        let n = self.u32(field)? as usize;
        if n.saturating_mul(item_len_min.max(1)) > self.buf.len() {
            return Err(ProtocolError::invalid(format!(
                "{field}: {n} items cannot fit in the body"
            )));
        }
        Ok(n)
    }

    pub fn finish(&self, what: &str) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::invalid(format!(
                "{} unexpected bytes after {what}",
                self.buf.len()
            )))
        }
    }
}

/// Appending encoders, the mirror of [`Reader`].
pub trait Writer {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    fn put_i64(&mut self, v: i64);
    fn put_bool(&mut self, v: bool);
    /// Panics if longer than u16::MAX bytes: callers validate names first.
    fn put_str(&mut self, v: &str);
    /// Panics if longer than 255 bytes: callers validate tenants first.
    fn put_tenant(&mut self, v: Option<&[u8]>);
    fn put_bytes(&mut self, v: &[u8]);
}

impl Writer for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_i64(&mut self, v: i64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_bool(&mut self, v: bool) {
        self.push(u8::from(v));
    }
    fn put_str(&mut self, v: &str) {
        self.put_u16(u16::try_from(v.len()).expect("string longer than 65535 bytes"));
        self.extend_from_slice(v.as_bytes());
    }
    fn put_tenant(&mut self, v: Option<&[u8]>) {
        let t = v.unwrap_or(&[]);
        self.push(u8::try_from(t.len()).expect("tenant longer than 255 bytes"));
        self.extend_from_slice(t);
    }
    fn put_bytes(&mut self, v: &[u8]) {
        self.put_u32(u32::try_from(v.len()).expect("bytes longer than 4 GiB"));
        self.extend_from_slice(v);
    }
}
