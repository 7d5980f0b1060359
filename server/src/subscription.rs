//! A subscription: a cursor in one partition that the server pushes from as records land,
//! never beyond the bytes of credit the client has granted.
//!
//! Credit is counted in bytes of batches sent. A batch larger than the remaining credit
//! waits until the client grants more, so a client must keep at least one maximum batch
//! (`batch_bytes_max`) of credit outstanding; the client library grants back what it has
//! consumed.

use std::sync::Arc;

use tidelog_engine::Partition;

#[derive(Debug)]
pub struct Subscription {
    pub partition: Arc<Partition>,
    /// The next offset to send.
    pub next_offset: u64,
    /// Bytes the client will still accept.
    pub credit_bytes: u64,
    /// Only this tenant's records, when set.
    pub tenant: Option<Vec<u8>>,
    /// Only records meeting these criteria, when set (decided record by record).
    pub criteria: Option<tidelog_engine::extract::Criteria>,
    /// The reader's job bringing the pages of its next read into the page cache
    /// (`cold.rs`): not pumped until it is done.
    pub warming: Option<u64>,
    /// The position whose pages the reader has read in: read from there without asking
    /// again.
    pub warmed_at: Option<u64>,
}
