//! Records as a consumer receives them: decoded from batches that are CRC-checked on
//! arrival, so a damaged byte anywhere between the disk and here is an error, never data.

use tidelog_protocol::batch::check_frame;

use crate::error::{ClientError, Result};

/// One consumed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: i64,
    pub tenant: Option<Vec<u8>>,
    pub key: Option<Vec<u8>>,
    /// `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Decodes every record at or after `from` in a run of whole batches, checking each
/// batch's CRC first.
pub fn decode_batches(
    partition: u32,
    bytes: &[u8],
    from: u64,
    out: &mut Vec<ConsumedRecord>,
) -> Result<()> {
    let mut pos = 0;
    while pos < bytes.len() {
        let view = check_frame(&bytes[pos..])
            .map_err(|e| ClientError::Corrupt(format!("batch at byte {pos}: {e}")))?;
        for record in view.records() {
            let r = record.map_err(ClientError::Corrupt)?;
            if r.offset < from {
                continue;
            }
            out.push(ConsumedRecord {
                partition,
                offset: r.offset,
                timestamp_ms: r.timestamp_ms,
                tenant: r.tenant.map(<[u8]>::to_vec),
                key: r.key.map(<[u8]>::to_vec),
                value: r.value.map(<[u8]>::to_vec),
                headers: r.headers().map(|(n, v)| (n.to_vec(), v.to_vec())).collect(),
            });
        }
        pos += view.bytes().len();
    }
    Ok(())
}
