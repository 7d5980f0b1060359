//! Error codes carried by error responses. Numbers are part of the protocol: never reuse
//! or renumber one (docs/PROTOCOL.md lists them all).

/// A numbered error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The request body does not parse, or a field is out of its range.
    InvalidRequest = 1,
    /// The frame itself is unusable (length out of range, bad header): the server closes
    /// the connection after sending this.
    BadFrame = 2,
    /// The frame's version is not one the server speaks, or no common version in HELLO.
    UnsupportedVersion = 3,
    /// The request kind is unknown to this server.
    UnknownKind = 4,
    /// The first request on a connection must be HELLO.
    HandshakeRequired = 5,
    UnknownTopic = 10,
    UnknownPartition = 11,
    TopicExists = 12,
    InvalidConfig = 13,
    OffsetOutOfRange = 20,
    /// A batch exceeds the topic's `batch_bytes_max` or the frame limit.
    RecordTooLarge = 21,
    /// A published batch fails its CRC or structure check.
    InvalidBatch = 22,
    OutOfOrderSequence = 23,
    StaleSequence = 24,
    UnknownSubscription = 30,
    SubscriptionExists = 31,
    /// The extraction to resume is unknown: its resume window passed, or the server
    /// restarted. Start a new extraction.
    ExtractionExpired = 32,
    /// No group of that name (no member and no committed offset).
    UnknownGroup = 70,
    /// The member id is not (or no longer) in the group: its session expired, it left,
    /// or the server restarted. Join again with an empty member id.
    UnknownMember = 71,
    /// The generation is older than the one the partition was granted in (or newer than
    /// the member's): the request comes from a stale view of the group.
    StaleGeneration = 72,
    /// The member does not hold that partition.
    NotPartitionOwner = 73,
    /// The group exists for another topic.
    GroupTopicMismatch = 74,
    /// The group exists as the other kind (stream vs queue).
    GroupKindMismatch = 75,
    /// The record is not leased to this member: never delivered to it, its lease
    /// expired, or it is already settled.
    NotLeased = 76,
    /// The caller is not permitted to do this.
    NotAllowed = 40,
    /// A limit of the server was reached (connections, buffered bytes, subscriptions).
    ServerOverloaded = 50,
    /// The partition stopped accepting writes after a failed sync.
    StorageFailed = 51,
    Timeout = 52,
    ShuttingDown = 53,
    /// A bug or an unexpected I/O error on the server.
    Internal = 60,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 30] = [
        ErrorCode::InvalidRequest,
        ErrorCode::BadFrame,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnknownKind,
        ErrorCode::HandshakeRequired,
        ErrorCode::UnknownTopic,
        ErrorCode::UnknownPartition,
        ErrorCode::TopicExists,
        ErrorCode::InvalidConfig,
        ErrorCode::OffsetOutOfRange,
        ErrorCode::RecordTooLarge,
        ErrorCode::InvalidBatch,
        ErrorCode::OutOfOrderSequence,
        ErrorCode::StaleSequence,
        ErrorCode::UnknownSubscription,
        ErrorCode::SubscriptionExists,
        ErrorCode::ExtractionExpired,
        ErrorCode::UnknownGroup,
        ErrorCode::UnknownMember,
        ErrorCode::StaleGeneration,
        ErrorCode::NotPartitionOwner,
        ErrorCode::GroupTopicMismatch,
        ErrorCode::GroupKindMismatch,
        ErrorCode::NotLeased,
        ErrorCode::NotAllowed,
        ErrorCode::ServerOverloaded,
        ErrorCode::StorageFailed,
        ErrorCode::Timeout,
        ErrorCode::ShuttingDown,
        ErrorCode::Internal,
    ];

    pub fn from_u16(code: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| *c as u16 == code)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?} ({})", *self as u16)
    }
}

/// An error as it travels: a code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ProtocolError::new(ErrorCode::InvalidRequest, message)
    }
}
