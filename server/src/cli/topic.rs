//! `tidelog topic create|list|describe|delete|add-partitions`.

use clap::Subcommand;
use tidelog_client::TopicSettings;

use super::ServerArg;

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Segment size in bytes [server default: 256 MiB].
        #[arg(long)]
        segment_bytes: Option<u32>,
        /// Keep at most about this many bytes per partition [default: unlimited].
        #[arg(long)]
        retention_bytes: Option<u64>,
        /// Keep records for this many milliseconds [default: forever].
        #[arg(long)]
        retention_ms: Option<u64>,
        /// `delete` (retention only) or `compact` (also keep only the latest record of
        /// each (tenant, key); offsets preserved).
        #[arg(long, default_value = "delete", value_parser = ["delete", "compact"])]
        cleanup_policy: String,
        /// Compact topics: keep tombstones this long [server default: one day].
        #[arg(long)]
        tombstone_retention_ms: Option<u64>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List topics with their partition counts (not the server's internal `__tidelog*`
    /// topics, unless --all).
    List {
        /// Also the internal topics (committed group offsets, queue state).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Partitions with earliest/latest offsets and sizes.
    Describe {
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// A tenant's figures: its partition, latest event id, live keys, events.
    Tenant {
        name: String,
        tenant: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Delete a topic and its data.
    Delete {
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Raise a topic's partition count (partitions are never removed).
    AddPartitions {
        name: String,
        /// The new total.
        #[arg(long)]
        partitions: u32,
        #[command(flatten)]
        server: ServerArg,
    },
}

pub fn run(command: TopicCommand) -> Result<(), String> {
    match command {
        TopicCommand::Create {
            name,
            partitions,
            segment_bytes,
            retention_bytes,
            retention_ms,
            cleanup_policy,
            tombstone_retention_ms,
            server,
        } => {
            let client = server.connect()?;
            let settings = TopicSettings {
                partitions,
                segment_bytes: segment_bytes.unwrap_or(0),
                retention_bytes: retention_bytes.unwrap_or(0),
                retention_ms: retention_ms.unwrap_or(0),
                cleanup: u8::from(cleanup_policy == "compact"),
                tombstone_retention_ms: tombstone_retention_ms.unwrap_or(0),
            };
            client
                .create_topic(&name, settings)
                .map_err(|e| e.to_string())?;
            println!("created topic {name} with {partitions} partition(s)");
        }
        TopicCommand::List { all, server } => {
            let client = server.connect()?;
            for (name, partitions) in client.list_topics().map_err(|e| e.to_string())? {
                if all || !name.starts_with(crate::dispatch::INTERNAL_TOPIC_PREFIX) {
                    println!("{name}\t{partitions}");
                }
            }
        }
        TopicCommand::Describe { name, server } => {
            let client = server.connect()?;
            let d = client.describe_topic(&name).map_err(|e| e.to_string())?;
            let limit = |v: u64| {
                if v == u64::MAX {
                    "unlimited".to_string()
                } else {
                    v.to_string()
                }
            };
            let cleanup = if d.cleanup == 1 {
                format!("compact (tombstones kept {} ms)", d.tombstone_retention_ms)
            } else {
                "delete".to_string()
            };
            println!(
                "topic {name}: {} partition(s), segment_bytes {}, retention_bytes {}, retention_ms {}, cleanup {cleanup}",
                d.partitions.len(),
                d.segment_bytes,
                limit(d.retention_bytes),
                limit(d.retention_ms)
            );
            println!("partition\tearliest\tlatest\tdurable\tsize_bytes\tsegments");
            for p in &d.partitions {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    p.offsets.partition,
                    p.offsets.earliest,
                    p.offsets.next,
                    p.offsets.durable,
                    p.size_bytes,
                    p.segments
                );
            }
        }
        TopicCommand::Tenant {
            name,
            tenant,
            server,
        } => {
            let info = server
                .connect()?
                .tenant_info(&name, tenant.as_bytes())
                .map_err(|e| e.to_string())?;
            println!(
                "tenant {tenant} of {name}: partition {}, latest event {}, {} live keys, {} events",
                info.partition,
                info.latest_offset.map_or("none".into(), |o| o.to_string()),
                info.live_keys,
                info.events
            );
        }
        TopicCommand::Delete { name, server } => {
            server
                .connect()?
                .delete_topic(&name)
                .map_err(|e| e.to_string())?;
            println!("deleted topic {name}");
        }
        TopicCommand::AddPartitions {
            name,
            partitions,
            server,
        } => {
            server
                .connect()?
                .add_partitions(&name, partitions)
                .map_err(|e| e.to_string())?;
            println!("topic {name} now has {partitions} partition(s)");
        }
    }
    Ok(())
}
