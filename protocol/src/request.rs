//! Requests (client → server), version 1. Each variant's body layout is listed on it and
//! in docs/PROTOCOL.md. Bodies borrow from the frame: a published batch is never copied
//! by the decoder.

use crate::codec::{Reader, Writer};
use crate::error::{ErrorCode, ProtocolError};
use crate::group::GroupRequest;
use crate::kind;

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Offset(u64),
    /// ms since the Unix epoch: the first batch holding a record at or after it.
    Timestamp(i64),
    Earliest,
    /// Only records published from now on.
    Latest,
}

impl StartAt {
    fn put(&self, out: &mut Vec<u8>) {
        let (tag, value) = match *self {
            StartAt::Offset(o) => (0u8, o),
            StartAt::Timestamp(t) => (1, t as u64),
            StartAt::Earliest => (2, 0),
            StartAt::Latest => (3, 0),
        };
        out.put_u8(tag);
        out.put_u64(value);
    }

    fn get(r: &mut Reader<'_>) -> Result<StartAt, ProtocolError> {
        let tag = r.u8("start_kind")?;
        let value = r.u64("start_value")?;
        match tag {
            0 => Ok(StartAt::Offset(value)),
            1 => Ok(StartAt::Timestamp(value as i64)),
            // Fuzzing found that accepting any value here made decode/encode lossy: the
            // value of `earliest`/`latest` must be 0, so one encoding means one request.
            2 | 3 if value != 0 => Err(ProtocolError::invalid(format!(
                "start_value must be 0 for start_kind {tag}, got {value}"
            ))),
            2 => Ok(StartAt::Earliest),
            3 => Ok(StartAt::Latest),
            other => Err(ProtocolError::invalid(format!(
                "start_kind {other} is not 0..=3"
            ))),
        }
    }
}

/// Acknowledgement level of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// No response unless the publish fails.
    None = 0,
    /// After the batches are in the log (page cache): survives a server crash.
    Written = 1,
    /// After a sync covers them (group commit): survives power loss.
    Durable = 2,
}

impl Ack {
    pub fn from_u8(v: u8) -> Option<Ack> {
        match v {
            0 => Some(Ack::None),
            1 => Some(Ack::Written),
            2 => Some(Ack::Durable),
            _ => None,
        }
    }
}

/// Settings of a new topic; 0 means "the server's default".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TopicSettings {
    pub partitions: u32,
    pub segment_bytes: u32,
    pub retention_bytes: u64,
    pub retention_ms: u64,
    /// 0 delete (retention only), 1 compact (also keep only the latest record of each
    /// (tenant, key)).
    pub cleanup: u8,
    /// Compact topics: how long a tombstone is kept (0: the server's default, one day).
    pub tombstone_retention_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// `min_version u8, max_version u8, client str`
    Hello {
        min_version: u8,
        max_version: u8,
        client: &'a str,
    },
    /// empty
    Ping,
    /// `name str, partitions u32, segment_bytes u32, retention_bytes u64, retention_ms u64,
    /// cleanup u8, tombstone_retention_ms u64`
    CreateTopic {
        name: &'a str,
        settings: TopicSettings,
    },
    /// `name str`
    DeleteTopic { name: &'a str },
    /// empty
    ListTopics,
    /// `name str`
    DescribeTopic { name: &'a str },
    /// `name str, partitions u32` (the new total)
    AddPartitions { name: &'a str, partitions: u32 },
    /// `topic str, partition u32, ack u8, batches bytes` (one or more whole batches)
    Publish {
        topic: &'a str,
        partition: u32,
        ack: Ack,
        batches: &'a [u8],
    },
    /// `topic str, partition u32, start_kind u8, start_value u64, max_bytes u32,
    /// max_wait_ms u32, tenant`
    Fetch {
        topic: &'a str,
        partition: u32,
        start: StartAt,
        max_bytes: u32,
        max_wait_ms: u32,
        tenant: Option<&'a [u8]>,
    },
    /// `subscription u32, topic str, partition u32, start_kind u8, start_value u64,
    /// credit_bytes u32, tenant, since_ms i64, until_ms i64, key_prefix str, headers u8 count
    /// × (name str, value str)` — the same criteria as an extraction's, applied by the server
    Subscribe {
        subscription: u32,
        topic: &'a str,
        partition: u32,
        start: StartAt,
        credit_bytes: u32,
        tenant: Option<&'a [u8]>,
        filter: ExtractFilter<'a>,
    },
    /// `subscription u32`
    Unsubscribe { subscription: u32 },
    /// `subscription u32, credit_bytes u32` (added to the subscription's credit)
    GrantCredits {
        subscription: u32,
        credit_bytes: u32,
    },
    /// `topic str`
    Offsets { topic: &'a str },
    /// `extraction u32, topic str, partition u32, tenant (empty: every tenant), mode u8, since_ms i64,
    /// until_ms i64, key_prefix str, headers u8 count × (name str, value str), credit_bytes u32,
    /// resume_token u64, resume_cursor u64`
    Extract {
        extraction: u32,
        topic: &'a str,
        partition: u32,
        tenant: &'a [u8],
        mode: ExtractMode,
        filter: ExtractFilter<'a>,
        credit_bytes: u32,
        /// 0 for a new extraction; else the token of one to resume at `resume_cursor`.
        resume_token: u64,
        resume_cursor: u64,
    },
    /// Consumer groups (kinds 0x0200..): see [`crate::group`].
    Group(GroupRequest<'a>),
    /// `topic str, tenant` (non-empty): the tenant's figures in its partition.
    TenantInfo { topic: &'a str, tenant: &'a [u8] },
}

/// What an extraction returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtractMode {
    /// The latest live record of every key of the tenant as of the watermark.
    State = 0,
    /// Every event of the tenant up to the watermark that meets the filter, in offset order.
    History = 1,
}

/// Criteria of an extraction. `i64::MIN` / `i64::MAX` and empty prefix mean "no bound".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractFilter<'a> {
    pub since_ms: i64,
    pub until_ms: i64,
    pub key_prefix: &'a str,
    pub headers: Vec<(&'a str, &'a str)>,
}

impl<'a> ExtractFilter<'a> {
    /// `since_ms i64, until_ms i64, key_prefix str, headers u8 count × (name str, value str)`
    fn put(&self, out: &mut Vec<u8>) {
        out.put_i64(self.since_ms);
        out.put_i64(self.until_ms);
        out.put_str(self.key_prefix);
        out.put_u8(u8::try_from(self.headers.len()).expect("at most 255 header criteria"));
        for (n, v) in &self.headers {
            out.put_str(n);
            out.put_str(v);
        }
    }

    fn get(r: &mut Reader<'a>) -> Result<ExtractFilter<'a>, ProtocolError> {
        let since_ms = r.i64("since_ms")?;
        let until_ms = r.i64("until_ms")?;
        let key_prefix = r.str("key_prefix")?;
        let n = r.u8("headers")?;
        let mut headers = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            headers.push((r.str("header name")?, r.str("header value")?));
        }
        Ok(ExtractFilter {
            since_ms,
            until_ms,
            key_prefix,
            headers,
        })
    }

    /// No criterion at all.
    pub fn is_empty(&self) -> bool {
        self.since_ms == i64::MIN
            && self.until_ms == i64::MAX
            && self.key_prefix.is_empty()
            && self.headers.is_empty()
    }
}

impl Default for ExtractFilter<'_> {
    fn default() -> Self {
        ExtractFilter {
            since_ms: i64::MIN,
            until_ms: i64::MAX,
            key_prefix: "",
            headers: Vec::new(),
        }
    }
}

impl<'a> Request<'a> {
    pub fn kind(&self) -> u16 {
        match self {
            Request::Hello { .. } => kind::HELLO,
            Request::Ping => kind::PING,
            Request::CreateTopic { .. } => kind::CREATE_TOPIC,
            Request::DeleteTopic { .. } => kind::DELETE_TOPIC,
            Request::ListTopics => kind::LIST_TOPICS,
            Request::DescribeTopic { .. } => kind::DESCRIBE_TOPIC,
            Request::AddPartitions { .. } => kind::ADD_PARTITIONS,
            Request::Publish { .. } => kind::PUBLISH,
            Request::Fetch { .. } => kind::FETCH,
            Request::Subscribe { .. } => kind::SUBSCRIBE,
            Request::Unsubscribe { .. } => kind::UNSUBSCRIBE,
            Request::GrantCredits { .. } => kind::GRANT_CREDITS,
            Request::Offsets { .. } => kind::OFFSETS,
            Request::Extract { .. } => kind::EXTRACT,
            Request::Group(g) => g.kind(),
            Request::TenantInfo { .. } => kind::TENANT_INFO,
        }
    }

    /// Whether the server answers this request when it succeeds.
    pub fn expects_response(&self) -> bool {
        !matches!(
            self,
            Request::GrantCredits { .. } | Request::Publish { ack: Ack::None, .. }
        )
    }

    /// As [`Request::encode_body`], but a publish's batches are left out (their length
    /// is written) and returned, for the caller to send after the encoded bytes.
    pub fn encode_body_split(&self, out: &mut Vec<u8>) -> &'a [u8] {
        if let Request::Publish {
            topic,
            partition,
            ack,
            batches,
        } = *self
        {
            out.put_str(topic);
            out.put_u32(partition);
            out.put_u8(ack as u8);
            out.put_u32(u32::try_from(batches.len()).expect("batches longer than 4 GiB"));
            return batches;
        }
        self.encode_body(out);
        &[]
    }

    pub fn encode_body(&self, out: &mut Vec<u8>) {
        match *self {
            Request::Hello {
                min_version,
                max_version,
                client,
            } => {
                out.put_u8(min_version);
                out.put_u8(max_version);
                out.put_str(client);
            }
            Request::Ping | Request::ListTopics => {}
            Request::CreateTopic { name, settings } => {
                out.put_str(name);
                out.put_u32(settings.partitions);
                out.put_u32(settings.segment_bytes);
                out.put_u64(settings.retention_bytes);
                out.put_u64(settings.retention_ms);
                out.put_u8(settings.cleanup);
                out.put_u64(settings.tombstone_retention_ms);
            }
            Request::DeleteTopic { name }
            | Request::DescribeTopic { name }
            | Request::Offsets { topic: name } => out.put_str(name),
            Request::AddPartitions { name, partitions } => {
                out.put_str(name);
                out.put_u32(partitions);
            }
            Request::Publish {
                topic,
                partition,
                ack,
                batches,
            } => {
                out.put_str(topic);
                out.put_u32(partition);
                out.put_u8(ack as u8);
                out.put_bytes(batches);
            }
            Request::Fetch {
                topic,
                partition,
                start,
                max_bytes,
                max_wait_ms,
                tenant,
            } => {
                out.put_str(topic);
                out.put_u32(partition);
                start.put(out);
                out.put_u32(max_bytes);
                out.put_u32(max_wait_ms);
                out.put_tenant(tenant);
            }
            Request::Subscribe {
                subscription,
                topic,
                partition,
                start,
                credit_bytes,
                tenant,
                ref filter,
            } => {
                out.put_u32(subscription);
                out.put_str(topic);
                out.put_u32(partition);
                start.put(out);
                out.put_u32(credit_bytes);
                out.put_tenant(tenant);
                filter.put(out);
            }
            Request::Unsubscribe { subscription } => out.put_u32(subscription),
            Request::GrantCredits {
                subscription,
                credit_bytes,
            } => {
                out.put_u32(subscription);
                out.put_u32(credit_bytes);
            }
            Request::Extract {
                extraction,
                topic,
                partition,
                tenant,
                mode,
                ref filter,
                credit_bytes,
                resume_token,
                resume_cursor,
            } => {
                out.put_u32(extraction);
                out.put_str(topic);
                out.put_u32(partition);
                out.put_tenant(Some(tenant));
                out.put_u8(mode as u8);
                filter.put(out);
                out.put_u32(credit_bytes);
                out.put_u64(resume_token);
                out.put_u64(resume_cursor);
            }
            Request::Group(ref g) => g.encode_body(out),
            Request::TenantInfo { topic, tenant } => {
                out.put_str(topic);
                out.put_tenant(Some(tenant));
            }
        }
    }

    /// Decodes the body of a request frame of `kind`.
    pub fn decode(kind: u16, body: &'a [u8]) -> Result<Request<'a>, ProtocolError> {
        let mut r = Reader::new(body);
        let request = match kind {
            kind::HELLO => Request::Hello {
                min_version: r.u8("min_version")?,
                max_version: r.u8("max_version")?,
                client: r.str("client")?,
            },
            kind::PING => Request::Ping,
            kind::CREATE_TOPIC => Request::CreateTopic {
                name: r.str("name")?,
                settings: TopicSettings {
                    partitions: r.u32("partitions")?,
                    segment_bytes: r.u32("segment_bytes")?,
                    retention_bytes: r.u64("retention_bytes")?,
                    retention_ms: r.u64("retention_ms")?,
                    cleanup: match r.u8("cleanup")? {
                        c @ (0 | 1) => c,
                        c => {
                            return Err(ProtocolError::invalid(format!(
                                "cleanup {c} is not 0 (delete) or 1 (compact)"
                            )))
                        }
                    },
                    tombstone_retention_ms: r.u64("tombstone_retention_ms")?,
                },
            },
            kind::DELETE_TOPIC => Request::DeleteTopic {
                name: r.str("name")?,
            },
            kind::LIST_TOPICS => Request::ListTopics,
            kind::DESCRIBE_TOPIC => Request::DescribeTopic {
                name: r.str("name")?,
            },
            kind::ADD_PARTITIONS => Request::AddPartitions {
                name: r.str("name")?,
                partitions: r.u32("partitions")?,
            },
            kind::PUBLISH => Request::Publish {
                topic: r.str("topic")?,
                partition: r.u32("partition")?,
                ack: {
                    let a = r.u8("ack")?;
                    Ack::from_u8(a)
                        .ok_or_else(|| ProtocolError::invalid(format!("ack {a} is not 0..=2")))?
                },
                batches: r.bytes("batches")?,
            },
            kind::FETCH => Request::Fetch {
                topic: r.str("topic")?,
                partition: r.u32("partition")?,
                start: StartAt::get(&mut r)?,
                max_bytes: r.u32("max_bytes")?,
                max_wait_ms: r.u32("max_wait_ms")?,
                tenant: r.tenant("tenant")?,
            },
            kind::SUBSCRIBE => Request::Subscribe {
                subscription: r.u32("subscription")?,
                topic: r.str("topic")?,
                partition: r.u32("partition")?,
                start: StartAt::get(&mut r)?,
                credit_bytes: r.u32("credit_bytes")?,
                tenant: r.tenant("tenant")?,
                filter: ExtractFilter::get(&mut r)?,
            },
            kind::UNSUBSCRIBE => Request::Unsubscribe {
                subscription: r.u32("subscription")?,
            },
            kind::GRANT_CREDITS => Request::GrantCredits {
                subscription: r.u32("subscription")?,
                credit_bytes: r.u32("credit_bytes")?,
            },
            kind::OFFSETS => Request::Offsets {
                topic: r.str("topic")?,
            },
            kind::EXTRACT => {
                let extraction = r.u32("extraction")?;
                let topic = r.str("topic")?;
                let partition = r.u32("partition")?;
                // No tenant: every tenant of the partition (a topic-wide extraction asks
                // each partition in turn).
                let tenant = r.tenant("tenant")?.unwrap_or(&[]);
                let mode = match r.u8("mode")? {
                    0 => ExtractMode::State,
                    1 => ExtractMode::History,
                    m => {
                        return Err(ProtocolError::invalid(format!(
                            "mode {m} is not 0 (state) or 1 (history)"
                        )))
                    }
                };
                let filter = ExtractFilter::get(&mut r)?;
                Request::Extract {
                    extraction,
                    topic,
                    partition,
                    tenant,
                    mode,
                    filter,
                    credit_bytes: r.u32("credit_bytes")?,
                    resume_token: r.u64("resume_token")?,
                    resume_cursor: r.u64("resume_cursor")?,
                }
            }
            kind::TENANT_INFO => Request::TenantInfo {
                topic: r.str("topic")?,
                tenant: r
                    .tenant("tenant")?
                    .ok_or_else(|| ProtocolError::invalid("TENANT_INFO names a tenant"))?,
            },
            other => {
                if let Some(group) = GroupRequest::decode(other, body) {
                    return group.map(Request::Group);
                }
                return Err(ProtocolError::new(
                    ErrorCode::UnknownKind,
                    format!("unknown request kind {other:#06x}"),
                ));
            }
        };
        r.finish("the request body")?;
        Ok(request)
    }
}
