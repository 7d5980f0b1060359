//! Frame kinds. A response carries the kind of its request. Ranges are reserved for the
//! capabilities that come next, so their numbers never collide with these.

pub const HELLO: u16 = 0x0001;
pub const PING: u16 = 0x0002;

pub const CREATE_TOPIC: u16 = 0x0010;
pub const DELETE_TOPIC: u16 = 0x0011;
pub const LIST_TOPICS: u16 = 0x0012;
pub const DESCRIBE_TOPIC: u16 = 0x0013;
pub const ADD_PARTITIONS: u16 = 0x0014;

pub const PUBLISH: u16 = 0x0020;

pub const FETCH: u16 = 0x0030;
pub const SUBSCRIBE: u16 = 0x0031;
pub const UNSUBSCRIBE: u16 = 0x0032;
pub const GRANT_CREDITS: u16 = 0x0033;
/// Server push: records for a subscription (flags PUSH; correlation = subscription id).
pub const DATA: u16 = 0x0034;

pub const OFFSETS: u16 = 0x0040;

/// Bulk extraction of a tenant (state or history), fenced by a watermark.
pub const EXTRACT: u16 = 0x0100;
/// Server push: a chunk of an extraction (flags PUSH; correlation = extraction id).
pub const EXTRACT_DATA: u16 = 0x0101;
/// Server push: the extraction is complete (flags PUSH; correlation = extraction id).
pub const EXTRACT_END: u16 = 0x0102;
/// A tenant's figures in its partition: latest event id, live keys, events.
pub const TENANT_INFO: u16 = 0x0103;

/// Stream groups (docs/PROTOCOL.md, "Consumer groups").
pub const GROUP_HEARTBEAT: u16 = 0x0200;
pub const GROUP_LEAVE: u16 = 0x0201;
pub const GROUP_COMMIT: u16 = 0x0202;
pub const GROUP_OFFSETS: u16 = 0x0203;
pub const GROUP_LIST: u16 = 0x0204;
pub const GROUP_DESCRIBE: u16 = 0x0205;
/// Server push: heartbeat now, the member's assignment changed (flags PUSH; correlation =
/// the heartbeat's `notify` id).
pub const GROUP_NOTICE: u16 = 0x0206;
/// Queue groups.
pub const QUEUE_JOIN: u16 = 0x0210;
pub const QUEUE_POLL: u16 = 0x0211;
pub const QUEUE_SETTLE: u16 = 0x0212;
pub const QUEUE_LEAVE: u16 = 0x0213;

/// 0x0104..=0x01FF: more extraction. 0x0200..=0x02FF: consumer groups.
/// 0x0300..=0x03FF: replication. 0x0400..=0x04FF: authentication.
pub const RESERVED_RANGES: [(u16, u16); 4] = [
    (0x0100, 0x01FF),
    (0x0200, 0x02FF),
    (0x0300, 0x03FF),
    (0x0400, 0x04FF),
];
