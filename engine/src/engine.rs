//! The engine: a data directory of topics, the flusher thread, clean shutdown.
//!
//! ```text
//! <data_dir>/
//!   .lock                      flock'ed while an engine has the directory open
//!   clean-shutdown             present only between a clean close and the next open
//!   topics/<topic>/topic.meta
//!   topics/<topic>/<partition>/{<base:020>.log,.index,.timeindex}
//!   topics/<topic>/<partition>/{recovery.checkpoint,producers.snapshot}
//! ```
//!
//! Ownership: the engine owns topics; topics own partitions (`Arc`, shared with readers);
//! one flusher thread serves every partition. The engine is `Sync`: any thread may append
//! or read; appends to one partition serialise on its writer lock.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{EngineConfig, TopicConfig};
use crate::error::{EngineError, Result};
use crate::flusher::{self, FlushQueue};
use crate::fsio;
use crate::indexer::Indexer;
use crate::notify::Watcher;
use crate::partition::{Appended, Partition, Services};
use crate::recovery::{self, RecoveryReport};
use crate::topic::{self, Topic, TopicMeta};

pub const CLEAN_SHUTDOWN_FILE: &str = "clean-shutdown";
const CLEAN_MAGIC: &[u8] = b"tidelog clean shutdown v1\n";
const LOCK_FILE: &str = ".lock";
/// How long a blocking durable append waits for the flusher before giving up.
pub const DURABLE_WAIT_MAX: Duration = Duration::from_secs(30);

/// Acknowledgement level of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckLevel {
    /// The producer does not wait.
    None,
    /// In the log (the mapping, i.e. the page cache): survives a process crash.
    #[default]
    Written,
    /// Synced to disk: survives power loss.
    Durable,
}

/// Per-partition figures for `describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: u32,
    pub earliest_offset: u64,
    pub next_offset: u64,
    pub durable_offset: u64,
    pub size_bytes: u64,
    pub segments: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub config: TopicConfig,
    pub created_ms: i64,
    pub partitions: Vec<PartitionInfo>,
}

#[derive(Debug)]
pub(crate) struct EngineInner {
    data_dir: PathBuf,
    config: EngineConfig,
    /// Held only for a lookup or to insert or remove an entry, never while files are made
    /// or removed: an appender looks its partition up here on every request.
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serialises topic changes (create, delete, add partitions), which make and remove
    /// files for milliseconds to hundreds of them, outside the map's lock.
    topic_changes: Mutex<()>,
    services: Services,
    flush_queue: Arc<FlushQueue>,
    _lock: File,
}

impl EngineInner {
    pub(crate) fn all_partitions(&self) -> Vec<Arc<Partition>> {
        let topics = self.topics.read().unwrap_or_else(|p| p.into_inner());
        topics
            .values()
            .flat_map(|t| t.partitions().as_ref().clone())
            .collect()
    }
}

/// The storage engine. Dropping it without [`Engine::close`] is a crash as far as the
/// data directory is concerned (recovery runs on the next open).
#[derive(Debug)]
pub struct Engine {
    inner: Arc<EngineInner>,
    flusher: Option<JoinHandle<()>>,
    indexer: Option<JoinHandle<()>>,
    recovery: Vec<(String, u32, RecoveryReport)>,
}

impl Engine {
    /// Opens (creating if needed) a data directory, recovering every partition.
    pub fn open(data_dir: impl AsRef<Path>, config: EngineConfig) -> Result<Engine> {
        let data_dir = data_dir.as_ref().to_path_buf();
        let topics_dir = data_dir.join("topics");
        fs::create_dir_all(&topics_dir)
            .map_err(|e| EngineError::io("create data dir", &topics_dir, e))?;
        let lock = lock_dir(&data_dir)?;
        let marker = data_dir.join(CLEAN_SHUTDOWN_FILE);
        let clean = fs::read(&marker).is_ok_and(|b| b == CLEAN_MAGIC);
        let started = Instant::now();

        let indexer = Arc::new(Indexer::default());
        let services = Services {
            sync: config.sync.clone(),
            watcher: Arc::new(OnceLock::new()),
            indexer: indexer.clone(),
            index_lag: config.index_lag,
        };
        let mut topics = BTreeMap::new();
        let mut reports = Vec::new();
        for entry in
            fs::read_dir(&topics_dir).map_err(|e| EngineError::io("list", &topics_dir, e))?
        {
            let entry = entry.map_err(|e| EngineError::io("list", &topics_dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let dir = entry.path();
            if name.starts_with(".deleted-") || name.starts_with(".creating-") {
                fs::remove_dir_all(&dir).map_err(|e| EngineError::io("remove", &dir, e))?;
                continue;
            }
            if topic::validate_name(&name).is_err() || !dir.is_dir() {
                continue;
            }
            let meta = TopicMeta::read(&dir)?;
            let name: Arc<str> = Arc::from(name.as_str());
            let mut partitions = Vec::new();
            for p in 0..meta.config.partitions {
                let (partition, report) =
                    open_partition(&name, p, &dir, &meta.config, &config, clean, &services)?;
                reports.push((name.to_string(), p, report));
                partitions.push(partition.into_arc());
            }
            topics.insert(
                name.to_string(),
                Arc::new(Topic::new(name, dir, meta, partitions)),
            );
        }
        if marker.exists() {
            fs::remove_file(&marker).map_err(|e| EngineError::io("remove", &marker, e))?;
            fsio::sync_dir(&data_dir)?;
        }
        tracing::info!(
            data_dir = %data_dir.display(),
            clean,
            topics = topics.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "engine opened"
        );

        let flush_queue = Arc::new(FlushQueue::default());
        let inner = Arc::new(EngineInner {
            data_dir,
            config: config.clone(),
            topics: RwLock::new(topics),
            topic_changes: Mutex::new(()),
            services,
            flush_queue: flush_queue.clone(),
            _lock: lock,
        });
        let index_thread = std::thread::Builder::new()
            .name("tidelog-indexer".into())
            .spawn(move || indexer.run())
            .map_err(|e| EngineError::io("spawn indexer", "", e))?;
        let weak = Arc::downgrade(&inner);
        let flusher = std::thread::Builder::new()
            .name("tidelog-flusher".into())
            .spawn(move || {
                flusher::run(
                    weak,
                    flush_queue,
                    config.flush_interval,
                    config.retention_check_interval,
                    config.page_cache_bytes,
                )
            })
            .map_err(|e| EngineError::io("spawn flusher", "", e))?;
        Ok(Engine {
            inner,
            flusher: Some(flusher),
            indexer: Some(index_thread),
            recovery: reports,
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// What recovery did to each partition when the engine opened.
    pub fn recovery_reports(&self) -> &[(String, u32, RecoveryReport)] {
        &self.recovery
    }

    /// Registers the (single) change watcher. Returns false if one was already set.
    pub fn set_watcher(&self, watcher: Arc<dyn Watcher>) -> bool {
        self.inner.services.watcher.set(watcher).is_ok()
    }

    /// Syncs performed by the flusher so far.
    pub fn sync_count(&self) -> u64 {
        self.inner.flush_queue.syncs.load(Ordering::Relaxed)
    }

    pub fn create_topic(&self, name: &str, config: TopicConfig) -> Result<Arc<Topic>> {
        topic::validate_name(name)?;
        config.validate()?;
        let _changing = self.lock_topic_changes();
        if self.topic(name).is_ok() {
            return Err(EngineError::TopicExists(name.to_string()));
        }
        let topics_dir = self.inner.data_dir.join("topics");
        // Build in a hidden directory and rename into place: a crash never leaves a
        // half-created topic behind (open removes `.creating-*`).
        let staging = topics_dir.join(format!(".creating-{name}"));
        let dir = topics_dir.join(name);
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(|e| EngineError::io("remove", &staging, e))?;
        }
        fs::create_dir_all(&staging).map_err(|e| EngineError::io("create", &staging, e))?;
        let meta = TopicMeta {
            config,
            created_ms: fsio::now_ms(),
        };
        meta.write(&staging)?;
        fs::rename(&staging, &dir).map_err(|e| EngineError::io("rename", &dir, e))?;
        fsio::sync_dir(&topics_dir)?;
        let name_arc: Arc<str> = Arc::from(name);
        let mut partitions = Vec::new();
        for p in 0..config.partitions {
            let (partition, _) = open_partition(
                &name_arc,
                p,
                &dir,
                &config,
                &self.inner.config,
                false,
                &self.inner.services,
            )?;
            partitions.push(partition.into_arc());
        }
        let topic = Arc::new(Topic::new(name_arc, dir, meta, partitions));
        self.inner
            .topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), topic.clone());
        tracing::info!(
            topic = name,
            partitions = config.partitions,
            "topic created"
        );
        Ok(topic)
    }

    /// Increases a topic's partition count (partitions are never removed).
    pub fn add_partitions(&self, name: &str, partitions: u32) -> Result<Arc<Topic>> {
        let _changing = self.lock_topic_changes();
        let topic = self.topic(name)?;
        let mut meta = topic.meta();
        if partitions < meta.config.partitions {
            return Err(EngineError::InvalidConfig(format!(
                "topic {name} has {} partitions; partitions can only be added",
                meta.config.partitions
            )));
        }
        meta.config.partitions = partitions;
        meta.config.validate()?;
        let mut list = topic.partitions().as_ref().clone();
        for p in list.len() as u32..partitions {
            let (partition, _) = open_partition(
                &topic.name().into(),
                p,
                topic.dir(),
                &meta.config,
                &self.inner.config,
                false,
                &self.inner.services,
            )?;
            list.push(partition.into_arc());
        }
        meta.write(topic.dir())?;
        topic.set_partitions(meta, list);
        Ok(topic)
    }

    /// Deletes a topic and its data. Readers holding its segments keep their mappings.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        let _changing = self.lock_topic_changes();
        let topic = self
            .inner
            .topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .ok_or_else(|| EngineError::UnknownTopic(name.to_string()))?;
        let topics_dir = self.inner.data_dir.join("topics");
        let grave = topics_dir.join(format!(".deleted-{name}-{}", fsio::now_ms()));
        fs::rename(topic.dir(), &grave).map_err(|e| EngineError::io("rename", &grave, e))?;
        fsio::sync_dir(&topics_dir)?;
        fs::remove_dir_all(&grave).map_err(|e| EngineError::io("remove", &grave, e))?;
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    fn lock_topic_changes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner
            .topic_changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.inner
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| EngineError::UnknownTopic(name.to_string()))
    }

    pub fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>> {
        self.topic(topic)?.partition(partition)
    }

    pub fn topic_names(&self) -> Vec<String> {
        self.inner
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    pub fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        let topic = self.topic(name)?;
        let meta = topic.meta();
        Ok(TopicInfo {
            name: name.to_string(),
            config: meta.config,
            created_ms: meta.created_ms,
            partitions: topic
                .partitions()
                .iter()
                .map(|p| PartitionInfo {
                    partition: p.id(),
                    earliest_offset: p.earliest_offset(),
                    next_offset: p.next_offset(),
                    durable_offset: p.durable_offset(),
                    size_bytes: p.size_bytes(),
                    segments: p.segments().len(),
                })
                .collect(),
        })
    }

    /// Appends a batch with the given acknowledgement level. `Durable` blocks until the
    /// flusher's group commit covers the batch.
    pub fn append(
        &self,
        topic: &str,
        partition: u32,
        batch: &[u8],
        ack: AckLevel,
    ) -> Result<Appended> {
        let p = self.partition(topic, partition)?;
        let appended = p.append(batch)?;
        if ack == AckLevel::Durable {
            self.wait_durable(&p, appended.last_offset)?;
        }
        Ok(appended)
    }

    /// Asks the flusher to sync a partition soon (group commit). Non-blocking: a server
    /// learns of completion through its [`Watcher`] (`Change::Durable`).
    pub fn request_flush(&self, partition: &Arc<Partition>) {
        self.inner.flush_queue.request(partition);
    }

    /// Requests a flush and blocks until `offset` is durable.
    pub fn wait_durable(&self, partition: &Arc<Partition>, offset: u64) -> Result<()> {
        if partition.durable_offset() > offset {
            return Ok(());
        }
        self.request_flush(partition);
        partition.wait_durable(offset, Instant::now() + DURABLE_WAIT_MAX)
    }

    /// Syncs every partition now (blocking): seals rolled segments, syncs active ones.
    pub fn flush_all(&self) -> Result<()> {
        for p in self.inner.all_partitions() {
            p.flush()?;
        }
        Ok(())
    }

    /// Drops the page cache of the oldest sealed segments until the log's cached bytes fit
    /// the budget (`EngineConfig::page_cache_bytes`), now (the flusher also does so after
    /// its periodic syncs).
    pub fn trim_page_cache(&self) -> Result<crate::page_cache::Trimmed> {
        crate::page_cache::trim(
            &self.inner.all_partitions(),
            self.inner.config.page_cache_bytes,
        )
    }

    /// Applies retention to every partition now (the flusher also does so periodically).
    pub fn apply_retention(&self) -> Result<usize> {
        let now = fsio::now_ms();
        let mut deleted = 0;
        for p in self.inner.all_partitions() {
            deleted += p.apply_retention(now)?;
        }
        Ok(deleted)
    }

    /// Compacts every partition of topics with cleanup `compact` now (the flusher also
    /// does so periodically).
    pub fn compact_all(&self) -> Result<crate::compaction::CompactionStats> {
        let now = fsio::now_ms();
        let mut total = crate::compaction::CompactionStats::default();
        for p in self.inner.all_partitions() {
            let s = p.compact(now)?;
            total.segments_rewritten += s.segments_rewritten;
            total.records_removed += s.records_removed;
            total.bytes_before += s.bytes_before;
            total.bytes_after += s.bytes_after;
        }
        Ok(total)
    }

    /// Clean shutdown: stop the flusher, sync and seal every partition, write the marker
    /// that lets the next open skip recovery.
    pub fn close(mut self) -> Result<()> {
        self.stop_flusher();
        let mut first_error = None;
        for p in self.inner.all_partitions() {
            if let Err(e) = p.close() {
                tracing::error!(topic = p.topic(), partition = p.id(), error = %e, "close failed");
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        fsio::write_atomic(
            &self.inner.data_dir.join(CLEAN_SHUTDOWN_FILE),
            CLEAN_MAGIC,
            true,
        )?;
        tracing::info!(data_dir = %self.inner.data_dir.display(), "engine closed cleanly");
        Ok(())
    }

    fn stop_flusher(&mut self) {
        self.inner.flush_queue.wake_to_stop();
        if let Some(handle) = self.flusher.take() {
            let _ = handle.join();
        }
        self.inner.services.indexer.stop();
        if let Some(handle) = self.indexer.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop_flusher();
    }
}

fn open_partition(
    topic: &Arc<str>,
    id: u32,
    topic_dir: &Path,
    config: &TopicConfig,
    engine_config: &EngineConfig,
    clean: bool,
    services: &Services,
) -> Result<(Partition, RecoveryReport)> {
    let dir = topic_dir.join(id.to_string());
    let opened = recovery::open_partition(
        &dir,
        config,
        engine_config.recovery_policy,
        clean,
        &engine_config.sync,
    )?;
    let partition =
        Partition::from_recovered(topic.clone(), id, dir, *config, opened.recovered, services)?;
    Ok((partition, opened.report))
}

/// Takes an exclusive advisory lock on the data directory: two engines writing one
/// directory would corrupt it.
fn lock_dir(data_dir: &Path) -> Result<File> {
    let path = data_dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| EngineError::io("open lock", &path, e))?;
    // SAFETY: plain syscall on an owned descriptor.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(EngineError::io(
            "lock data dir (is another tidelog running on it?)",
            &path,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(file)
}
