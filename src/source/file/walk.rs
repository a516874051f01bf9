//! Glob expansion: which regular files the source's `paths` (minus `exclude`) select now.
//!
//! The walk is our own, over `std::fs::read_dir` with an explicit stack, rather than the glob
//! crate (which follows directory symlinks blindly: `loop -> .` under `**` spins forever) or
//! walkdir (whose loop check compares a directory with its ancestors only, so two symlinks to
//! one directory walk it twice, and which cannot prune directories by pattern segment). Here:
//! - Patterns are matched one path segment at a time (`**` matches any number of segments), so
//!   only directories that can still lead to a match are read.
//! - Symlinks are followed, to files and to directories, but each directory (device + inode)
//!   is entered at most once per pattern: a cycle, or a second name for a directory already
//!   walked, is not entered again. Each file (device + inode) is listed once, under the first
//!   of its names in sorted order.
//! - `**` descends at most [`MAX_WALK_DEPTH`] directories, and one expansion lists at most
//!   `max_glob_matches` files; past either bound the walk says so ([`Walked::depth_limited`],
//!   [`Walked::match_limited`]) for the caller to warn and count.
//! - Matched paths that are not regular files (FIFOs, sockets, devices) are never opened (a
//!   FIFO's open blocks until a writer comes): they are listed in [`Walked::not_regular`].
//! - The walk checks the shutdown token every few hundred entries and returns what it has.
//! - An I/O error reading a directory (EACCES, EMFILE) is returned as what it is; it never makes
//!   a file look deleted (callers ask the file itself, see `tail.rs`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use super::FileError;
use crate::source::checkpoint::FileKey;

/// How deep `**` descends below the literal part of a pattern.
pub const MAX_WALK_DEPTH: usize = 32;

/// Entries examined between two looks at the shutdown token.
const CANCEL_CHECK_EVERY: usize = 256;

/// Most non-regular files and errors one walk keeps to report (the rest are only counted).
const MAX_REPORTED: usize = 100;

/// The directory entries examined at most when looking for a renamed file's new name.
const MAX_DIR_ENTRIES: usize = 100_000;

/// One segment of a pattern below its literal directory.
enum Seg {
    /// `**`: any number of segments, none included.
    Any,
    One(globset::GlobMatcher),
}

/// A pattern split into the directory it starts at and the segments below it.
struct Pattern {
    /// The literal directory part (`/var/log` of `/var/log/*/app.log`); empty: the current
    /// directory. For a pattern without glob characters, the whole path.
    base: PathBuf,
    segs: Vec<Seg>,
}

fn is_glob(seg: &str) -> bool {
    seg.contains(['*', '?', '[', '{'])
}

fn glob_err(pattern: &str, message: String) -> FileError {
    FileError::Glob {
        pattern: pattern.to_string(),
        message,
    }
}

impl Pattern {
    fn new(pattern: &str) -> Result<Pattern, FileError> {
        let parts: Vec<&str> = pattern.split('/').collect();
        let first_glob = parts.iter().position(|p| is_glob(p)).unwrap_or(parts.len());
        let mut base = parts[..first_glob].join("/");
        if base.is_empty() && pattern.starts_with('/') {
            base = "/".to_string();
        }
        let mut segs = Vec::new();
        for part in &parts[first_glob..] {
            if part.is_empty() {
                continue;
            }
            if *part == "**" {
                if !matches!(segs.last(), Some(Seg::Any)) {
                    segs.push(Seg::Any);
                }
                continue;
            }
            let m = globset::GlobBuilder::new(part)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| glob_err(pattern, e.to_string()))?
                .compile_matcher();
            segs.push(Seg::One(m));
        }
        Ok(Pattern {
            base: PathBuf::from(base),
            segs,
        })
    }

    /// Adds the positions reachable without consuming a segment (`**` matching none).
    fn close(&self, positions: &mut Vec<usize>) {
        let mut i = 0;
        while i < positions.len() {
            let p = positions[i];
            if matches!(self.segs.get(p), Some(Seg::Any)) && !positions.contains(&(p + 1)) {
                positions.push(p + 1);
            }
            i += 1;
        }
    }

    /// The positions after an entry named `name`, from `positions`.
    fn step(&self, positions: &[usize], name: &Path) -> Vec<usize> {
        let mut next = Vec::new();
        for &p in positions {
            let to = match self.segs.get(p) {
                Some(Seg::Any) => p,
                Some(Seg::One(m)) if m.is_match(name) => p + 1,
                _ => continue,
            };
            if !next.contains(&to) {
                next.push(to);
            }
        }
        self.close(&mut next);
        next
    }

    fn complete(&self, positions: &[usize]) -> bool {
        positions.contains(&self.segs.len())
    }
}

/// Bounds of one expansion.
#[derive(Debug, Clone, Copy)]
pub struct WalkLimits {
    pub max_matches: usize,
    pub max_depth: usize,
}

/// A file the globs select.
#[derive(Debug, Clone)]
pub struct FoundFile {
    pub path: PathBuf,
    /// Index of the first pattern that selects it.
    pub pattern: usize,
    pub key: FileKey,
    /// Its size when the walk saw it.
    pub len: u64,
}

/// What one expansion found, and what it left out.
#[derive(Debug, Default)]
pub struct Walked {
    /// Regular files, per pattern in sorted order, each file once.
    pub files: Vec<FoundFile>,
    /// Matched paths that are not regular files (at most [`MAX_REPORTED`]).
    pub not_regular: Vec<PathBuf>,
    /// I/O errors met (at most [`MAX_REPORTED`]): the path and the error.
    pub errors: Vec<(PathBuf, std::io::Error)>,
    /// Directories not entered because `**` reached the depth bound.
    pub depth_limited: u64,
    /// The walk stopped at `max_matches` files.
    pub match_limited: bool,
    /// The walk stopped because of shutdown; `files` is partial.
    pub cancelled: bool,
}

impl Walked {
    fn error(&mut self, path: &Path, e: std::io::Error) {
        if e.kind() != std::io::ErrorKind::NotFound && self.errors.len() < MAX_REPORTED {
            self.errors.push((path.to_path_buf(), e));
        }
    }
}

/// The patterns and excludes of a source, compiled once.
pub struct Globs {
    patterns: Vec<Pattern>,
    exclude: globset::GlobSet,
    /// Full patterns, for the paths notify reports (see [`Globs::pattern_of`]).
    full: Vec<globset::GlobMatcher>,
}

impl Globs {
    pub fn new(patterns: &[String], exclude: &[String]) -> Result<Globs, FileError> {
        let mut ex = globset::GlobSetBuilder::new();
        for e in exclude {
            ex.add(globset::Glob::new(e).map_err(|err| glob_err(e, err.to_string()))?);
        }
        let exclude = ex
            .build()
            .map_err(|err| glob_err(&exclude.join(","), err.to_string()))?;
        let full = patterns
            .iter()
            .map(|p| {
                globset::GlobBuilder::new(p)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .build()
                    .map(|g| g.compile_matcher())
                    .map_err(|e| glob_err(p, e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Globs {
            patterns: patterns
                .iter()
                .map(|p| Pattern::new(p))
                .collect::<Result<_, _>>()?,
            exclude,
            full,
        })
    }

    /// The index of the first pattern that selects `path`, if one does and no exclude does:
    /// for paths notify reports, and for the new name of a renamed file.
    pub fn pattern_of(&self, path: &Path) -> Option<usize> {
        // notify reports `./app.log` for a file that the pattern `app.log` names.
        let stripped = path.strip_prefix(".").ok();
        [Some(path), stripped].into_iter().flatten().find_map(|p| {
            if self.exclude.is_match(p) {
                return None;
            }
            self.full.iter().position(|g| g.is_match(p))
        })
    }

    /// Expands every pattern, within `limits`, until `shutdown`.
    pub fn walk(&self, limits: WalkLimits, shutdown: &CancellationToken) -> Walked {
        let mut out = Walked::default();
        let mut files: HashSet<FileKey> = HashSet::new();
        let mut examined = 0usize;
        for (i, pattern) in self.patterns.iter().enumerate() {
            let mut found: Vec<FoundFile> = Vec::new();
            self.walk_one(
                pattern,
                i,
                limits,
                shutdown,
                &mut out,
                &mut found,
                &mut examined,
            );
            found.sort_by(|a, b| a.path.cmp(&b.path));
            for f in found {
                if out.files.len() >= limits.max_matches {
                    out.match_limited = true;
                    break;
                }
                if files.insert(f.key) {
                    out.files.push(f);
                }
            }
            if out.cancelled || out.match_limited {
                break;
            }
        }
        out
    }

    /// One pattern's walk: depth-first with an explicit stack (no recursion), each directory
    /// entered once (by device + inode).
    #[allow(clippy::too_many_arguments)]
    fn walk_one(
        &self,
        pattern: &Pattern,
        index: usize,
        limits: WalkLimits,
        shutdown: &CancellationToken,
        out: &mut Walked,
        found: &mut Vec<FoundFile>,
        examined: &mut usize,
    ) {
        let budget = limits.max_matches.saturating_sub(out.files.len());
        if pattern.segs.is_empty() {
            // No glob character: the path itself, if it is a file.
            self.consider(&pattern.base, index, out, found, None);
            return;
        }
        let start = if pattern.base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &pattern.base
        };
        let mut visited: HashSet<FileKey> = HashSet::new();
        match std::fs::metadata(start) {
            Ok(m) if m.is_dir() => {
                visited.insert(FileKey::of(&m));
            }
            Ok(_) => return,
            Err(e) => return out.error(start, e),
        }
        let mut positions = vec![0];
        pattern.close(&mut positions);
        // (directory as listed, depth below the base, positions in the pattern)
        let mut stack: Vec<(PathBuf, usize, Vec<usize>)> =
            vec![(pattern.base.clone(), 0, positions)];
        while let Some((dir, depth, positions)) = stack.pop() {
            let read_from = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir.as_path()
            };
            let entries = match std::fs::read_dir(read_from) {
                Ok(e) => e,
                Err(e) => {
                    out.error(read_from, e);
                    continue;
                }
            };
            let mut names: Vec<(std::ffi::OsString, Option<std::fs::FileType>)> = Vec::new();
            for entry in entries {
                *examined += 1;
                if *examined % CANCEL_CHECK_EVERY == 0 && shutdown.is_cancelled() {
                    out.cancelled = true;
                    return;
                }
                match entry {
                    Ok(e) => names.push((e.file_name(), e.file_type().ok())),
                    Err(e) => out.error(read_from, e),
                }
            }
            // Sorted, so that the name a file or directory is first found under is stable
            // from one walk to the next (a name that flips would look like a rename).
            names.sort_by(|a, b| a.0.cmp(&b.0));
            let mut subdirs = Vec::new();
            for (name, ftype) in names {
                let next = pattern.step(&positions, Path::new(&name));
                if next.is_empty() {
                    continue;
                }
                let path = dir.join(&name);
                let is_dir = match ftype {
                    Some(t) if t.is_dir() => true,
                    Some(t) if t.is_symlink() => std::fs::metadata(&path).is_ok_and(|m| m.is_dir()),
                    _ => false,
                };
                if pattern.complete(&next) && !is_dir {
                    if found.len() >= budget {
                        out.match_limited = true;
                        return;
                    }
                    self.consider(&path, index, out, found, ftype);
                }
                let deeper = next.iter().any(|&p| p < pattern.segs.len());
                if is_dir && deeper {
                    if depth + 1 > limits.max_depth.max(pattern.segs.len()) {
                        out.depth_limited += 1;
                        continue;
                    }
                    match std::fs::metadata(&path) {
                        Ok(m) => {
                            if !visited.insert(FileKey::of(&m)) {
                                tracing::debug!(dir = %path.display(), "directory already walked (a symlink cycle or a second name); not entered again");
                                continue;
                            }
                        }
                        Err(e) => {
                            out.error(&path, e);
                            continue;
                        }
                    }
                    subdirs.push((path, depth + 1, next));
                }
            }
            // Reversed: the stack pops them in sorted order.
            stack.extend(subdirs.into_iter().rev());
        }
    }

    /// A path whose name completes the pattern: listed if it is a regular file (symlinks
    /// followed) that no exclude selects.
    fn consider(
        &self,
        path: &Path,
        pattern: usize,
        out: &mut Walked,
        found: &mut Vec<FoundFile>,
        ftype: Option<std::fs::FileType>,
    ) {
        if self.exclude.is_match(path) {
            return;
        }
        // Not a symlink: the entry's type says already whether it is worth a stat.
        let meta = match ftype {
            Some(t) if t.is_dir() => return,
            _ => match std::fs::metadata(path) {
                Ok(m) => m,
                Err(e) => return out.error(path, e),
            },
        };
        if meta.is_file() {
            found.push(FoundFile {
                path: path.to_path_buf(),
                pattern,
                key: FileKey::of(&meta),
                len: meta.len(),
            });
        } else if !meta.is_dir() && out.not_regular.len() < MAX_REPORTED {
            out.not_regular.push(path.to_path_buf());
        }
    }
}

/// The directory a path lives in, as `read_dir` and `join` want it.
pub fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// The entries of `dir` (at most [`MAX_DIR_ENTRIES`]) by inode number: where to look for a
/// renamed file, when logrotate kept it beside its old name.
pub fn dir_index(dir: &Path) -> std::io::Result<HashMap<u64, PathBuf>> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(dir)?.take(MAX_DIR_ENTRIES) {
        let Ok(entry) = entry else { continue };
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirEntryExt;
            out.insert(entry.ino(), entry.path());
        }
        #[cfg(not(unix))]
        let _ = entry;
    }
    Ok(out)
}

/// The path in `index` that is the file `key` now (checked with `stat`), if any.
pub fn find_in(index: &HashMap<u64, PathBuf>, key: FileKey) -> Option<PathBuf> {
    let path = index.get(&key.ino)?;
    let meta = std::fs::symlink_metadata(path).ok()?;
    (meta.is_file() && FileKey::of(&meta) == key).then(|| path.clone())
}

/// Looks for the file `key` among the entries of `dir`.
pub fn find_in_dir(dir: &Path, key: FileKey) -> std::io::Result<Option<PathBuf>> {
    Ok(find_in(&dir_index(dir)?, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(globs: &[&str], limits: WalkLimits) -> Walked {
        let globs: Vec<String> = globs.iter().map(|s| s.to_string()).collect();
        Globs::new(&globs, &[])
            .unwrap()
            .walk(limits, &CancellationToken::new())
    }

    const LIMITS: WalkLimits = WalkLimits {
        max_matches: 1000,
        max_depth: MAX_WALK_DEPTH,
    };

    fn names(w: &Walked, base: &Path) -> Vec<String> {
        w.files
            .iter()
            .map(|f| f.path.strip_prefix(base).unwrap().display().to_string())
            .collect()
    }

    #[cfg(unix)]
    #[test]
    fn symlink_cycles_are_walked_once_and_files_listed_once() {
        let d = tempfile::tempdir().unwrap();
        let g = d.path().join("g");
        std::fs::create_dir_all(g.join("sub/deep")).unwrap();
        std::fs::write(g.join("top.log"), b"x\n").unwrap();
        std::fs::write(g.join("sub/a.log"), b"x\n").unwrap();
        std::fs::write(g.join("sub/deep/b.log"), b"x\n").unwrap();
        std::os::unix::fs::symlink(".", g.join("sub/loop")).unwrap();
        std::os::unix::fs::symlink("../sub", g.join("sub/loop2")).unwrap();
        // A symlink to a file outside the walk is followed.
        std::fs::write(d.path().join("outside.txt"), b"x\n").unwrap();
        std::os::unix::fs::symlink("../../outside.txt", g.join("sub/link.log")).unwrap();
        let w = walk(&[&format!("{}/**/*.log", g.display())], LIMITS);
        assert_eq!(
            names(&w, &g),
            ["sub/a.log", "sub/deep/b.log", "sub/link.log", "top.log"]
        );
        assert!(!w.match_limited && !w.cancelled && w.depth_limited == 0);
    }

    #[test]
    fn segments_prune_the_walk_and_bounds_are_reported() {
        let d = tempfile::tempdir().unwrap();
        let mut deep = d.path().to_path_buf();
        for i in 0..5 {
            deep = deep.join(format!("d{i}"));
        }
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("x.log"), b"x\n").unwrap();
        for i in 0..10 {
            std::fs::write(d.path().join(format!("{i}.log")), b"x\n").unwrap();
        }
        let base = d.path().display().to_string();
        let one = walk(&[&format!("{base}/*.log")], LIMITS);
        assert_eq!(one.files.len(), 10, "`*` does not descend");
        let shallow = walk(
            &[&format!("{base}/**/x.log")],
            WalkLimits {
                max_matches: 1000,
                max_depth: 3,
            },
        );
        assert!(shallow.files.is_empty());
        assert_eq!(shallow.depth_limited, 1);
        let capped = walk(
            &[&format!("{base}/**/*.log")],
            WalkLimits {
                max_matches: 4,
                max_depth: 32,
            },
        );
        assert_eq!(capped.files.len(), 4);
        assert!(capped.match_limited);
        let literal = walk(&[&format!("{base}/3.log")], LIMITS);
        assert_eq!(names(&literal, d.path()), ["3.log"]);
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_listed_as_not_regular_and_never_opened() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("pipe.log");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("SKIPPED: no mkfifo");
            return;
        }
        std::fs::write(d.path().join("ok.log"), b"x\n").unwrap();
        let w = walk(&[&format!("{}/*.log", d.path().display())], LIMITS);
        assert_eq!(names(&w, d.path()), ["ok.log"]);
        assert_eq!(w.not_regular, [fifo]);
    }

    #[test]
    fn notify_paths_are_matched_as_the_globs_would_list_them() {
        let globs = ["app.log".to_string(), "/var/log/*.log".to_string()];
        let m = Globs::new(&globs, &["/var/log/skip.log".to_string()]).unwrap();
        assert_eq!(m.pattern_of(Path::new("./app.log")), Some(0));
        assert_eq!(m.pattern_of(Path::new("app.log")), Some(0));
        assert_eq!(m.pattern_of(Path::new("./app.log.1")), None);
        assert_eq!(m.pattern_of(Path::new("/var/log/x.log")), Some(1));
        assert_eq!(m.pattern_of(Path::new("/var/log/sub/x.log")), None);
        assert_eq!(m.pattern_of(Path::new("/var/log/skip.log")), None);
    }

    #[test]
    fn a_cancelled_walk_stops() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..600 {
            std::fs::write(d.path().join(format!("{i}.log")), b"x\n").unwrap();
        }
        let token = CancellationToken::new();
        token.cancel();
        let globs = vec![format!("{}/*.log", d.path().display())];
        let w = Globs::new(&globs, &[]).unwrap().walk(LIMITS, &token);
        assert!(w.cancelled);
        assert!(w.files.is_empty());
    }
}
