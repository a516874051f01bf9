//! File checkpoints: the read position of each file, kept under `data_dir`.
//!
//! A file is known by device + inode and a CRC32 fingerprint of its first bytes (up to
//! [`FINGERPRINT_BYTES`]), so a reused inode is recognised as a new file, not resumed. The
//! store is written as JSON to a temporary file, fsynced, then renamed over the old one: a crash
//! leaves either the old or the new checkpoint, never a torn one. Positions recorded are those
//! the pipeline acknowledged (processed), never merely read. The path of an entry is where the
//! file was last seen: for a rotated file still being read, its new name, so that a restart can
//! find it there (see `file.rs`). A store that cannot be parsed
//! (garbage, empty, truncated by a failing disk) does not stop weir: it is moved aside to
//! `*.json.corrupt`, counted, and the files are read as new ones, said in a warning.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How many leading bytes identify a file.
pub const FINGERPRINT_BYTES: u64 = 256;

/// Device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
}

impl FileKey {
    #[cfg(unix)]
    pub fn of(meta: &std::fs::Metadata) -> FileKey {
        use std::os::unix::fs::MetadataExt;
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    #[cfg(not(unix))]
    pub fn of(_meta: &std::fs::Metadata) -> FileKey {
        FileKey { dev: 0, ino: 0 }
    }

    fn id(&self) -> String {
        format!("{}:{}", self.dev, self.ino)
    }
}

/// The fingerprint of a file's first `len` bytes; `None` if it has fewer. Reads with `pread`,
/// so the file position (shared with the tailer's reader) does not move.
pub fn fingerprint(file: &mut std::fs::File, len: u64) -> std::io::Result<Option<u32>> {
    Ok(read_at(file, 0, len as usize)?.map(|b| crc32fast::hash(&b)))
}

/// `len` bytes at `offset`, or `None` if the file ends first. Does not move the file position.
pub fn read_at(file: &std::fs::File, offset: u64, len: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; len];
    #[cfg(unix)]
    let r = std::os::unix::fs::FileExt::read_exact_at(file, &mut buf, offset);
    #[cfg(not(unix))]
    let r: std::io::Result<()> = {
        let _ = (file, offset);
        Err(std::io::Error::other("positional reads need unix"))
    };
    match r {
        Ok(()) => Ok(Some(buf)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// One file's checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Where the file was last seen (informational).
    pub path: String,
    /// Bytes of the file covered by the fingerprint.
    pub fingerprint_len: u64,
    pub fingerprint: u32,
    /// Position just past the last processed line.
    pub offset: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StoreFile {
    version: u32,
    files: BTreeMap<String, Entry>,
}

/// The checkpoints of one file source.
#[derive(Debug)]
pub struct Store {
    path: Option<PathBuf>,
    files: BTreeMap<String, Entry>,
    dirty: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoints {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write checkpoints {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A checkpoint file that cannot be parsed (garbage, empty, truncated JSON) does not stop the
/// source: it is moved aside to `<name>.corrupt` (kept for a look), counted in
/// `weir_state_files_unreadable_total{file="checkpoint"}`, and every file is then read as a new
/// one (from where `read_from` says), which a warning spells out.
fn set_aside(path: &Path, empty: bool, error: &serde_json::Error) {
    crate::telemetry::state_metrics()
        .state_unreadable
        .with_label_values(&["checkpoint"])
        .inc();
    let aside = path.with_extension("json.corrupt");
    let moved = std::fs::rename(path, &aside);
    let what = if empty { "empty" } else { "not valid JSON" };
    match moved {
        Ok(()) => {
            tracing::warn!(path = %path.display(), moved_to = %aside.display(), error = %error, "checkpoint unreadable ({what}): no position is known, files are read as new ones (per read_from); the damaged file is kept beside it")
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %error, rename_error = %e, "checkpoint unreadable ({what}): no position is known, files are read as new ones (per read_from); it will be overwritten at the next save")
        }
    }
}

impl Store {
    /// Opens the store at `path` (`None`: positions are kept in memory only). A corrupt file is
    /// not an error: see [`set_aside`].
    pub fn open(path: Option<PathBuf>) -> Result<Store, CheckpointError> {
        let files = match &path {
            Some(p) => match std::fs::read(p) {
                Ok(bytes) => match serde_json::from_slice::<StoreFile>(&bytes) {
                    Ok(store) => store.files,
                    Err(source) => {
                        set_aside(p, bytes.is_empty(), &source);
                        BTreeMap::new()
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
                Err(source) => {
                    return Err(CheckpointError::Read {
                        path: p.clone(),
                        source,
                    })
                }
            },
            None => BTreeMap::new(),
        };
        Ok(Store {
            path,
            files,
            dirty: false,
        })
    }

    /// The resume offset of a file, if its checkpoint matches its identity.
    pub fn resume(&self, key: FileKey, file: &mut std::fs::File) -> std::io::Result<Option<u64>> {
        let Some(e) = self.files.get(&key.id()) else {
            return Ok(None);
        };
        let same = fingerprint(file, e.fingerprint_len)? == Some(e.fingerprint);
        let len = file.metadata()?.len();
        Ok((same && e.offset <= len).then_some(e.offset))
    }

    /// Records a file's position; the fingerprint covers what it holds up to FINGERPRINT_BYTES.
    pub fn record(
        &mut self,
        key: FileKey,
        path: &Path,
        file: &mut std::fs::File,
        offset: u64,
    ) -> std::io::Result<()> {
        let id = key.id();
        if self
            .files
            .get(&id)
            .is_some_and(|e| e.offset == offset && e.fingerprint_len == FINGERPRINT_BYTES)
        {
            return Ok(());
        }
        let len = file.metadata()?.len().min(FINGERPRINT_BYTES);
        let fp = fingerprint(file, len)?.unwrap_or(0);
        self.files.insert(
            id,
            Entry {
                path: path.display().to_string(),
                fingerprint_len: len,
                fingerprint: fp,
                offset,
            },
        );
        self.dirty = true;
        Ok(())
    }

    /// Moves the position of a file that has an entry already (one closed for now, whose
    /// batches in flight are still being acknowledged); its fingerprint stays.
    pub fn advance(&mut self, key: FileKey, offset: u64) {
        if let Some(e) = self.files.get_mut(&key.id()) {
            if e.offset != offset {
                e.offset = offset;
                self.dirty = true;
            }
        }
    }

    /// Forgets a file (deleted, or rotated out of the source's paths).
    pub fn forget(&mut self, key: FileKey) {
        if self.files.remove(&key.id()).is_some() {
            self.dirty = true;
        }
    }

    pub fn get(&self, key: FileKey) -> Option<&Entry> {
        self.files.get(&key.id())
    }

    /// Every file with a checkpoint, with the path it was last seen at.
    pub fn entries(&self) -> Vec<(FileKey, PathBuf)> {
        self.files
            .iter()
            .filter_map(|(id, e)| {
                let (dev, ino) = id.split_once(':')?;
                let key = FileKey {
                    dev: dev.parse().ok()?,
                    ino: ino.parse().ok()?,
                };
                Some((key, PathBuf::from(&e.path)))
            })
            .collect()
    }

    /// Writes the store if it changed: temporary file, fsync, rename.
    pub fn save(&mut self) -> Result<bool, CheckpointError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        if !self.dirty {
            return Ok(false);
        }
        let err = |source| CheckpointError::Write {
            path: path.clone(),
            source,
        };
        let body = serde_json::to_vec_pretty(&StoreFile {
            version: 1,
            files: self.files.clone(),
        })
        .map_err(|e| err(std::io::Error::other(e)))?;
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&body).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)?;
        self.dirty = false;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_only_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let store_path = dir.path().join("cp.json");
        let log = dir.path().join("a.log");
        std::fs::write(&log, b"line one\nline two\n").unwrap();
        let mut f = std::fs::File::open(&log).unwrap();
        let key = FileKey::of(&f.metadata().unwrap());
        let mut store = Store::open(Some(store_path.clone())).unwrap();
        store.record(key, &log, &mut f, 9).unwrap();
        assert!(store.save().unwrap());
        assert!(!store.save().unwrap(), "nothing changed, nothing written");
        let store = Store::open(Some(store_path.clone())).unwrap();
        assert_eq!(store.resume(key, &mut f).unwrap(), Some(9));
        // Same inode, other content (as after inode reuse): not resumed.
        std::fs::write(&log, b"other content\n").unwrap();
        let mut f = std::fs::File::open(&log).unwrap();
        assert_eq!(store.resume(key, &mut f).unwrap(), None);
    }

    /// Garbage, an empty file and truncated JSON: the store opens empty (files read as new),
    /// the damaged file is kept beside it and counted.
    #[test]
    fn a_corrupt_checkpoint_is_set_aside_and_the_store_opens_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store_path = dir.path().join("cp.json");
        let log = dir.path().join("a.log");
        std::fs::write(&log, b"line one\nline two\n").unwrap();
        let mut f = std::fs::File::open(&log).unwrap();
        let key = FileKey::of(&f.metadata().unwrap());
        let mut store = Store::open(Some(store_path.clone())).unwrap();
        store.record(key, &log, &mut f, 9).unwrap();
        store.save().unwrap();
        let good = std::fs::read(&store_path).unwrap();
        let counter = crate::telemetry::state_metrics()
            .state_unreadable
            .with_label_values(&["checkpoint"]);
        for damaged in [
            b"\x00\xff garbage".to_vec(),
            Vec::new(),
            good[..good.len() / 2].to_vec(),
        ] {
            std::fs::write(&store_path, &damaged).unwrap();
            let before = counter.get();
            let store = Store::open(Some(store_path.clone())).expect("opens anyway");
            assert_eq!(store.resume(key, &mut f).unwrap(), None);
            assert_eq!(counter.get(), before + 1);
            assert_eq!(
                std::fs::read(dir.path().join("cp.json.corrupt")).unwrap(),
                damaged
            );
            assert!(!store_path.exists(), "moved aside");
        }
    }
}
