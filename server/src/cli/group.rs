//! `tidelog group list|describe`: consumer groups, their members, what each holds, the
//! committed offsets and the lag.

use clap::Subcommand;

use super::{OutputFormat, ServerArg};

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Every group: kind, topic, members, generation.
    List {
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Members (with the partitions they hold), and per partition: owner, committed
    /// offset, latest offset, lag.
    Describe {
        group: String,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
        #[command(flatten)]
        server: ServerArg,
    },
}

fn list_text(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

pub fn run(command: GroupCommand) -> Result<(), String> {
    match command {
        GroupCommand::List { format, server } => {
            let groups = server.connect()?.group_list().map_err(|e| e.to_string())?;
            match format {
                OutputFormat::Json => {
                    for g in groups {
                        println!(
                            "{}",
                            serde_json::json!({
                                "group": g.name, "kind": g.kind, "topic": g.topic,
                                "members": g.members, "generation": g.generation,
                            })
                        );
                    }
                }
                OutputFormat::Text => {
                    println!("group\tkind\ttopic\tmembers\tgeneration");
                    for g in groups {
                        println!(
                            "{}\t{}\t{}\t{}\t{}",
                            g.name, g.kind, g.topic, g.members, g.generation
                        );
                    }
                }
            }
        }
        GroupCommand::Describe {
            group,
            format,
            server,
        } => {
            let d = server
                .connect()?
                .group_describe(&group)
                .map_err(|e| e.to_string())?;
            match format {
                OutputFormat::Json => {
                    let members: Vec<serde_json::Value> = d
                        .members
                        .iter()
                        .map(|m| {
                            serde_json::json!({
                                "member_id": m.member_id, "client": m.client,
                                "generation": m.generation, "partitions": m.owned,
                                "target": m.target,
                                "last_heartbeat_ms_ago": m.last_heartbeat_ms_ago,
                            })
                        })
                        .collect();
                    let partitions: Vec<serde_json::Value> = d
                        .partitions
                        .iter()
                        .map(|p| {
                            serde_json::json!({
                                "partition": p.partition, "owner": p.owner,
                                "committed": p.committed, "latest": p.next, "lag": p.lag,
                                "leased": p.leased, "in_flight": p.in_flight,
                                "dead_lettered": p.dead_lettered,
                            })
                        })
                        .collect();
                    println!(
                        "{}",
                        serde_json::json!({
                            "group": d.name, "kind": d.kind, "topic": d.topic,
                            "generation": d.generation, "members": members,
                            "partitions": partitions,
                            "lag": d.partitions.iter().map(|p| p.lag).sum::<u64>(),
                            "in_flight": d.partitions.iter().map(|p| p.in_flight).sum::<u64>(),
                            "dead_lettered": d.partitions.iter().map(|p| p.dead_lettered).sum::<u64>(),
                        })
                    );
                }
                OutputFormat::Text => {
                    println!(
                        "group {} ({} group on topic {}), generation {}, {} member(s), total lag {}",
                        d.name,
                        d.kind,
                        d.topic,
                        d.generation,
                        d.members.len(),
                        d.partitions.iter().map(|p| p.lag).sum::<u64>()
                    );
                    println!(
                        "member\tclient\t{}\tlast_{}_ms_ago",
                        if d.kind == "queue" {
                            "leases_on"
                        } else {
                            "partitions"
                        },
                        if d.kind == "queue" {
                            "poll"
                        } else {
                            "heartbeat"
                        }
                    );
                    for m in &d.members {
                        let moving = if m.owned == m.target {
                            String::new()
                        } else {
                            format!(" (moving to {})", list_text(&m.target))
                        };
                        println!(
                            "{}\t{}\t{}{moving}\t{}",
                            m.member_id,
                            m.client,
                            list_text(&m.owned),
                            m.last_heartbeat_ms_ago
                        );
                    }
                    if d.kind == "queue" {
                        // Queue groups: "committed" is the settled prefix (everything below
                        // is acked or dead-lettered).
                        println!("partition\tsettled_below\tlatest\tlag\tleased\tin_flight\tdead_lettered");
                        for p in &d.partitions {
                            println!(
                                "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                                p.partition,
                                p.committed.unwrap_or(0),
                                p.next,
                                p.lag,
                                p.leased,
                                p.in_flight,
                                p.dead_lettered
                            );
                        }
                    } else {
                        println!("partition\towner\tcommitted\tlatest\tlag");
                        for p in &d.partitions {
                            println!(
                                "{}\t{}\t{}\t{}\t{}",
                                p.partition,
                                p.owner.as_deref().unwrap_or("-"),
                                p.committed.map_or("-".to_string(), |c| c.to_string()),
                                p.next,
                                p.lag
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
