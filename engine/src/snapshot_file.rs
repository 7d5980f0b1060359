//! The framing shared by the engine's snapshot files (`producers.snapshot`,
//! `tenants.snapshot`): `| 0..4 magic | 4..8 crc32 of bytes 8.. | body |`, and a bounds-
//! checked reader for their bodies. A damaged file is an `Err(reason)`, never a panic.

/// Starts a snapshot: magic and a CRC placeholder.
pub(crate) fn begin(magic: &[u8; 4], capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity + 8);
    out.extend_from_slice(magic);
    out.extend_from_slice(&[0; 4]);
    out
}

/// Fills in the CRC of a snapshot started with [`begin`].
pub(crate) fn seal(out: &mut [u8]) {
    let crc = crc32fast::hash(&out[8..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Checks magic and CRC; returns a reader over the body.
pub(crate) fn open<'a>(bytes: &'a [u8], magic: &[u8; 4]) -> Result<Reader<'a>, String> {
    let mut r = Reader { buf: bytes };
    if r.take(4)? != magic {
        return Err("bad magic".into());
    }
    let crc = r.u32()?;
    if crc32fast::hash(r.buf) != crc {
        return Err("crc mismatch".into());
    }
    Ok(r)
}

pub(crate) struct Reader<'a> {
    pub buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err("snapshot ends early".into());
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| "short")?,
        ))
    }
    pub fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().map_err(|_| "short")?,
        ))
    }
    pub fn finish(&self) -> Result<(), String> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes".into())
        }
    }
}
