use super::*;
use crate::telemetry::SelfMetrics;

fn ev(i: u64) -> SinkEvent {
    SinkEvent {
        id: format!("{i:032x}"),
        line: format!("{{\"seq\":{i}}}"),
        timestamp: i as i64,
        level: Level::Info,
        component: Some("c".into()),
        message: "m".into(),
        trace_id: "t".into(),
        is_json: true,
        attrs: vec![("stream".into(), "stdout".into())],
        source: Arc::from("test"),
        ack: None,
        received: 0,
        span: None,
    }
}

fn metrics() -> (SelfMetrics, SinkMetrics) {
    let selfm = SelfMetrics::new();
    let m = SinkMetrics::new(&selfm, "s");
    (selfm, m)
}

/// Reads `want` events through a pump; events in `deliver` are acknowledged (dropped), the
/// others held until the pump is abandoned (as if weir was killed with them in flight).
async fn pump_once(dir: &Path, want: usize, deliver: usize) -> Vec<u64> {
    let (w, pump) = open(dir, "s", 1 << 30).unwrap();
    drop(w);
    let (tx, mut rx) = mpsc::channel(4);
    let (gone, abandon) = (CancellationToken::new(), CancellationToken::new());
    let task = tokio::spawn(pump.run(tx, gone.clone(), abandon.clone(), metrics().1));
    let mut got = Vec::new();
    let mut held = Vec::new();
    while got.len() < want {
        let chunk = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        for e in chunk {
            got.push(e.timestamp as u64);
            if got.len() > deliver {
                held.push(e);
            }
        }
    }
    // Let the cursor be saved for what was delivered, then stop.
    tokio::time::sleep(Duration::from_millis(700)).await;
    abandon.cancel();
    task.await.unwrap();
    drop(held);
    got
}

/// Drains the whole buffer once the writer is gone: every event read, and the pump ends.
async fn drain(dir: &Path) -> (Vec<u64>, SelfMetrics, SinkMetrics) {
    let (w, pump) = open(dir, "s", 1 << 30).unwrap();
    drop(w);
    let (selfm, m) = metrics();
    let (tx, mut rx) = mpsc::channel(4);
    let gone = CancellationToken::new();
    gone.cancel();
    let task = tokio::spawn(pump.run(tx, gone, CancellationToken::new(), m.clone()));
    let mut got = Vec::new();
    while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
        m.buffer_events.sub(chunk.len() as i64);
        got.extend(chunk.iter().map(|e| e.timestamp as u64));
    }
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the pump ends once everything is read")
        .unwrap();
    (got, selfm, m)
}

fn write_events(dir: &Path, range: std::ops::Range<u64>) {
    let (mut w, _pump) = open(dir, "s", 1 << 30).unwrap();
    let batch: Vec<SinkEvent> = range.map(ev).collect();
    for chunk in batch.chunks(100) {
        w.append(chunk).unwrap();
    }
}

fn seg0(dir: &Path) -> PathBuf {
    dir.join("buffer/s").join(segment_name(0))
}

#[tokio::test]
async fn survives_a_restart_and_resends_only_what_was_not_delivered() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut w, _pump) = open(dir.path(), "s", 1 << 30).unwrap();
        let batch: Vec<SinkEvent> = (0..1000).map(ev).collect();
        w.append(&batch).unwrap();
        assert!(w.backlog() > 0);
    }
    // First run: 1000 read, the first 600 (whole chunks: 512) delivered.
    let got = pump_once(dir.path(), 1000, 600).await;
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
    // Second run resumes after the last fully delivered chunk: from 512.
    let got = pump_once(dir.path(), 488, 488).await;
    assert_eq!(got, (512..1000).collect::<Vec<_>>());
    // A half-written record (crash mid-append) is cut when reopened.
    let mut f = OpenOptions::new()
        .append(true)
        .open(seg0(dir.path()))
        .unwrap();
    f.write_all(b"\x1e0000004").unwrap();
    let (mut w, _p) = open(dir.path(), "s", 1 << 30).unwrap();
    w.append(&[ev(1000)]).unwrap();
    drop(w);
    let got = pump_once(dir.path(), 1, 1).await;
    assert_eq!(got, vec![1000]);
}

/// Flipped bytes in the middle of a segment lose only the records they hit: counted, and the
/// records after them (in this segment and the next) still arrive.
#[tokio::test]
async fn flipped_bytes_lose_only_the_damaged_records_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    write_events(dir.path(), 0..2000);
    let path = seg0(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    // Damage 16 bytes straddling the end of one record and the start of the next.
    let mid = bytes.len() / 2;
    let nl = mid + bytes[mid..].iter().position(|&b| b == b'\n').unwrap();
    for b in &mut bytes[nl - 8..nl + 8] {
        *b ^= 0xff;
    }
    // And 16 bytes inside a record's payload further on.
    let nl2 = nl
        + 20_000
        + bytes[nl + 20_000..]
            .iter()
            .position(|&b| b == b'\n')
            .unwrap();
    let later = nl2 + 30;
    for b in &mut bytes[later..later + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&path, &bytes).unwrap();
    // A second segment after it, intact.
    {
        let (mut w, _p) = open(dir.path(), "s", 1 << 30).unwrap();
        w.committed = w.segment_bytes; // force a new segment
        w.append(&(2000..2100).map(ev).collect::<Vec<_>>()).unwrap();
    }
    let (got, _selfm, m) = drain(dir.path()).await;
    let missing: Vec<u64> = (0..2100).filter(|i| !got.contains(i)).collect();
    assert_eq!(
        missing.len(),
        3,
        "two records at the first spot, one at the second: {missing:?}"
    );
    assert_eq!(
        missing[0] + 1,
        missing[1],
        "the first spot straddles two records"
    );
    assert_eq!(got.len(), 2097, "none twice");
    assert_eq!(m.dropped.with_label_values(&["s", "corrupt"]).get(), 3);
    assert_eq!(m.buffer_events.get(), 0);
}

/// The previous format (JSON lines, no header) is still read, and new events go to a new
/// segment after it.
#[tokio::test]
async fn a_v1_segment_is_read_and_appends_go_to_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let bdir = dir.path().join("buffer/s");
    std::fs::create_dir_all(&bdir).unwrap();
    let mut v1 = Vec::new();
    for i in 0..10 {
        serde_json::to_writer(&mut v1, &Record::of(&ev(i))).unwrap();
        v1.push(b'\n');
    }
    v1.extend_from_slice(b"{\"id\":\"torn");
    std::fs::write(bdir.join(segment_name(0)), &v1).unwrap();
    {
        let (mut w, _p) = open(dir.path(), "s", 1 << 30).unwrap();
        w.append(&[ev(10)]).unwrap();
    }
    let (got, _s, m) = drain(dir.path()).await;
    assert_eq!(got, (0..11).collect::<Vec<_>>());
    assert_eq!(m.dropped.with_label_values(&["s", "corrupt"]).get(), 0);
}

/// A segment written by a newer weir is refused with a message, not misread.
#[test]
fn a_segment_of_another_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bdir = dir.path().join("buffer/s");
    std::fs::create_dir_all(&bdir).unwrap();
    std::fs::write(bdir.join(segment_name(0)), b"\x1eweir-buffer v3\nwhatever").unwrap();
    let err = open(dir.path(), "s", 1 << 30).err().expect("refused");
    assert!(
        err.to_string()
            .contains("format v3 is not one this weir reads"),
        "{err}"
    );
}

/// A cursor file with garbage: everything is sent again from the oldest segment.
#[tokio::test]
async fn a_garbage_cursor_resends_from_the_oldest_segment() {
    let dir = tempfile::tempdir().unwrap();
    write_events(dir.path(), 0..300);
    std::fs::write(dir.path().join("buffer/s/cursor"), b"\x00\xffgarbage").unwrap();
    let before = state_metrics()
        .state_unreadable
        .with_label_values(&["disk_buffer_cursor"])
        .get();
    let (got, _s, _m) = drain(dir.path()).await;
    assert_eq!(got, (0..300).collect::<Vec<_>>());
    assert!(
        state_metrics()
            .state_unreadable
            .with_label_values(&["disk_buffer_cursor"])
            .get()
            > before
    );
}

/// A write that fails leaves nothing behind: the bytes that reached the file are cut back, so
/// the next append starts at a record boundary and nothing is swallowed.
#[tokio::test]
async fn a_failed_write_is_cut_back_before_the_next_append() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _p) = open(dir.path(), "s", 1 << 30).unwrap();
    w.append(&[ev(0)]).unwrap();
    // Simulate a partial write: half a record reached the file, then the write failed.
    let committed = w.committed;
    let mut f = OpenOptions::new()
        .append(true)
        .open(seg0(dir.path()))
        .unwrap();
    f.write_all(b"\x1e00000080deadbeef {\"id\":\"half").unwrap();
    w.torn = true;
    w.append(&[ev(1)]).unwrap();
    assert!(w.committed > committed);
    drop(w);
    let (got, _s, m) = drain(dir.path()).await;
    assert_eq!(got, vec![0, 1]);
    assert_eq!(m.dropped.with_label_values(&["s", "corrupt"]).get(), 0);
}
