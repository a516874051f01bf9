//! Unit tests of the tailer's rotation checks (the walk has its own, in `walk.rs`).

use std::path::Path;

use super::tail::{State, Tail, Tailed};
use super::*;
use crate::source::checkpoint::Store;
use crate::source::Format;

fn tail_of(pattern: &Path) -> (Tail, tail::Ctx) {
    let cfg = FileConfig::for_paths(vec![pattern.display().to_string()], Format::Json);
    let tail = Tail {
        cfg,
        multiline: None,
        data_dir: None,
        max_line_bytes: 1000,
        selfm: SelfMetrics::new(),
    };
    let ctx = tail.ctx().unwrap();
    (tail, ctx)
}

fn events(tail: &Tail, event: &str) -> u64 {
    tail.selfm
        .file_events_total
        .with_label_values(&[event])
        .get()
}

fn open(tail: &Tail, path: &Path, store: &Store) -> Tailed {
    let handle = std::fs::File::open(path).unwrap();
    tail.open(handle, path, 0, store, false).unwrap().1
}

#[test]
fn renamed_is_rotated_unlinked_is_deleted_and_an_error_is_neither() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("app.log");
    std::fs::write(&live, b"one\n").unwrap();
    let (tail, ctx) = tail_of(&live);
    let store = Store::open(None).unwrap();

    let mut t = open(&tail, &live, &store);
    tail.locate(&mut t, &ctx);
    assert_eq!(t.state, State::Live, "still at its path");
    std::fs::rename(&live, dir.path().join("app.log.1")).unwrap();
    std::fs::write(&live, b"new\n").unwrap();
    tail.locate(&mut t, &ctx);
    assert_eq!(t.state, State::Gone { deleted: false });
    assert_eq!(
        t.path,
        dir.path().join("app.log.1"),
        "its new name, found by inode"
    );
    assert_eq!((events(&tail, "rotated"), events(&tail, "deleted")), (1, 0));

    let mut t = open(&tail, &live, &store);
    std::fs::remove_file(&live).unwrap();
    tail.locate(&mut t, &ctx);
    assert_eq!(t.state, State::Gone { deleted: true });
    assert_eq!((events(&tail, "rotated"), events(&tail, "deleted")), (1, 1));

    // A path that cannot be looked at (ENOTDIR here; EACCES, EIO alike) is no rotation.
    std::fs::write(&live, b"again\n").unwrap();
    let mut t = open(&tail, &live, &store);
    t.path = live.join("below-a-file");
    tail.locate(&mut t, &ctx);
    assert_eq!(t.state, State::Live);
    assert_eq!((events(&tail, "rotated"), events(&tail, "deleted")), (1, 1));
    assert_eq!(events(&tail, "error_other"), 1);
    assert_eq!(
        tail.selfm
            .file_errors_total
            .with_label_values(&["other"])
            .get(),
        1
    );
}

#[test]
fn a_rename_to_a_selected_name_keeps_the_file_live() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("app.log");
    std::fs::write(&live, b"one\n").unwrap();
    let (tail, ctx) = tail_of(&dir.path().join("app.log*"));
    let store = Store::open(None).unwrap();
    let mut t = open(&tail, &live, &store);
    std::fs::rename(&live, dir.path().join("app.log.1")).unwrap();
    tail.locate(&mut t, &ctx);
    assert_eq!(t.state, State::Live);
    assert_eq!(t.path, dir.path().join("app.log.1"));
    assert_eq!(events(&tail, "rotated"), 1);
}

#[cfg(unix)]
#[test]
fn open_regular_refuses_a_fifo_and_a_directory_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.log");
    if !std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("SKIPPED: no mkfifo");
        return;
    }
    // Without O_NONBLOCK this open would wait for a writer forever.
    let e = open_regular(&fifo).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    let e = open_regular(dir.path()).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    std::fs::write(dir.path().join("a.log"), b"x\n").unwrap();
    assert!(open_regular(&dir.path().join("a.log")).is_ok());
}
