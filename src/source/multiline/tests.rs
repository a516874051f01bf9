use super::*;

const PYTHON: &str = include_str!("../../../tests/fixtures/multiline/python.log");
const JAVA: &str = include_str!("../../../tests/fixtures/multiline/java.log");
const GO: &str = include_str!("../../../tests/fixtures/multiline/go.log");

fn counter() -> IntCounter {
    IntCounter::new("cut", "cut").unwrap()
}

fn joiner(cfg: &str) -> (Joiner, IntCounter) {
    let cfg: MultilineConfig = toml::from_str(cfg).unwrap();
    let cut = counter();
    (
        Joiner::new(cfg.compile().unwrap(), 1 << 20, Some(cut.clone())),
        cut,
    )
}

/// Batches of `per` lines of `text`, laid out as a file source reads them (each line's bytes at
/// its offset from `origin`'s base).
fn batches(text: &str, per: usize) -> Vec<LineBatch> {
    let mut out = Vec::new();
    let mut offset = 0usize;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for chunk in lines.chunks(per.max(1)) {
        let mut b = LineBatch::new("t".into());
        let base = offset;
        for l in chunk {
            let start = b.buf.len();
            b.buf.extend_from_slice(l.as_bytes());
            let end = start + l.trim_end_matches('\n').len();
            b.lines.push(LineSpan {
                start: start as u32,
                end: end as u32,
                truncated: false,
                attrs: 0,
            });
            offset += l.len();
        }
        b.bytes_read = (offset - base) as u64;
        b.origin = Some((7, base as u64));
        out.push(b);
    }
    out
}

/// Every event of `text` joined in batches of `per` lines: (text, file offset of its first line).
fn events(j: &mut Joiner, text: &str, per: usize) -> Vec<(String, Option<u64>)> {
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut take = |b: &LineBatch| {
        bytes += b.bytes_read;
        for s in &b.lines {
            let off = b.origin.map(|(_, base)| base + u64::from(s.start));
            out.push((String::from_utf8_lossy(b.line(s)).into_owned(), off));
        }
    };
    for b in batches(text, per) {
        let joined = j.join(b);
        take(&joined);
    }
    if let Some(b) = j.flush(&"t".into()) {
        take(&b);
    }
    assert_eq!(bytes, text.len() as u64, "every byte is accounted for");
    out
}

fn texts(v: &[(String, Option<u64>)]) -> Vec<&str> {
    v.iter().map(|(t, _)| t.as_str()).collect()
}

#[test]
fn python_tracebacks_join_the_json_line_before_them_in_any_batch_size() {
    let lines: Vec<&str> = PYTHON.lines().collect();
    assert_eq!(lines.len(), 31, "the fixture as CPython 3.11 wrote it");
    let want = vec![
        lines[0].to_string(),
        lines[1..16].join("\n"),
        lines[16..30].join("\n"),
        lines[30].to_string(),
    ];
    for per in [1, 2, 3, 7, 100] {
        let (mut j, cut) = joiner(r#"mode = "python""#);
        let got = events(&mut j, PYTHON, per);
        assert_eq!(texts(&got), want, "batches of {per} lines");
        assert_eq!(cut.get(), 0);
        // Each event keeps its first line's file offset (stable ids), wherever it was cut.
        let offsets: Vec<usize> = want
            .iter()
            .map(|w| PYTHON.find(w.as_str()).unwrap())
            .collect();
        for ((_, off), want) in got.iter().zip(&offsets) {
            if let Some(off) = off {
                assert_eq!(*off, *want as u64, "batches of {per}");
            }
        }
    }
    assert!(want[1].ends_with("ValueError: lookup failed"));
    assert!(want[2].contains("During handling of the above exception"));
}

#[test]
fn java_stack_trace_with_caused_by_and_more_is_one_event() {
    let (mut j, _) = joiner(r#"mode = "java""#);
    let got = events(&mut j, JAVA, 4);
    let got = texts(&got);
    assert_eq!(got.len(), 3, "{got:#?}");
    assert!(got[1].starts_with("2024-01-01 00:00:01,020 ERROR [main] App - task failed\njava.lang.RuntimeException: task failed\n\tat App.level1"));
    assert!(got[1].contains("\nCaused by: java.lang.IllegalStateException: queue full: 3\n"));
    assert!(got[1].ends_with("\t... 13 more"));
    assert_eq!(got[2], "2024-01-01 00:00:02,021 INFO  [main] App - done");
}

#[test]
fn go_panic_block_is_one_event_between_json_lines() {
    let (mut j, _) = joiner(r#"mode = "go""#);
    let text = format!("{GO}{{\"level\":\"info\",\"msg\":\"restarted\"}}\n");
    let got = events(&mut j, &text, 3);
    let got = texts(&got);
    assert_eq!(got.len(), 3, "{got:#?}");
    assert!(got[0].starts_with("{\"level\":\"info\",\"msg\":\"starting\""));
    assert!(got[1].starts_with("panic: runtime error: index out of range [5] with length 3\n\ngoroutine 1 [running]:\nmain.get(...)\n"));
    assert!(got[1].ends_with("main.go:10 +0x65"));
    assert_eq!(got[2], "{\"level\":\"info\",\"msg\":\"restarted\"}");
}

#[test]
fn custom_start_and_continuation_rules() {
    // Only `start`: every other line continues.
    let (mut j, _) = joiner(r#"start = '^\d{4}-'"#);
    let got = events(&mut j, "2024-a\nmore\nmore\n2024-b\n2024-c\nx\n", 2);
    assert_eq!(texts(&got), ["2024-a\nmore\nmore", "2024-b", "2024-c\nx"]);
    // Only `continuation`: every other line starts an event.
    let (mut j, _) = joiner(r#"continuation = '^\s'"#);
    let got = events(&mut j, "a\n b\n c\nd\ne\n f\n", 1);
    assert_eq!(texts(&got), ["a\n b\n c", "d", "e\n f"]);
    // Both: a line matching neither stands alone.
    let (mut j, _) = joiner(
        r#"start = '^\{'
continuation = '^\s'"#,
    );
    let got = events(&mut j, "{1\n x\nplain\n y\n{2\n", 1);
    assert_eq!(texts(&got), ["{1\n x", "plain\n y", "{2"]);
}

#[test]
fn events_past_max_lines_or_max_bytes_are_cut_and_counted_once() {
    let mut text = String::from("{\"a\":1}\nTraceback (most recent call last):\n");
    for i in 0..20 {
        text.push_str(&format!("  File \"x.py\", line {i}, in f\n"));
    }
    text.push_str("ValueError: x\n{\"a\":2}\n");
    let (mut j, cut) = joiner("mode = \"python\"\nmax_lines = 5");
    let got = events(&mut j, &text, 4);
    let got = texts(&got);
    assert_eq!(
        got.len(),
        2,
        "the rest of the traceback is dropped, not split off"
    );
    assert_eq!(got[0].lines().count(), 5);
    assert_eq!(got[1], "{\"a\":2}");
    assert_eq!(cut.get(), 1);
    let (mut j, cut) = joiner("mode = \"python\"\nmax_bytes = 50");
    let got = events(&mut j, &text, 100);
    let got = texts(&got);
    assert!(got[0].len() <= 50, "{}", got[0]);
    assert_eq!(got.len(), 2);
    assert_eq!(cut.get(), 1);
    // max_bytes never passes max_line_bytes.
    let cfg = MultilineConfig::mode(MultilineMode::Python)
        .compile()
        .unwrap();
    let mut j = Joiner::new(cfg, 30, None);
    let got = events(&mut j, &text, 100);
    assert!(texts(&got)[0].len() <= 30);
}

#[test]
fn a_line_of_another_stream_starts_a_new_event() {
    let out: Attrs = Arc::from(vec![("stream".into(), "stdout".into())]);
    let err: Attrs = Arc::from(vec![("stream".into(), "stderr".into())]);
    let mut b = LineBatch::new("t".into());
    b.push(b"{\"a\":1}", false, Some(&out));
    b.push(b"  indented on stderr", false, Some(&err));
    b.push(b"  indented on stderr too", false, Some(&err));
    let (mut j, _) = joiner(r#"mode = "python""#);
    let first = j.join(b);
    assert_eq!(first.lines.len(), 1);
    let rest = j.flush(&"t".into()).unwrap();
    assert_eq!(
        rest.line(&rest.lines[0]),
        b"  indented on stderr\n  indented on stderr too"
    );
    assert_eq!(rest.attrs_of(&rest.lines[0])[0].1.as_ref(), "stderr");
}

#[test]
fn the_held_event_pins_the_checkpoint_and_waits_its_timeout() {
    let (mut j, _) = joiner("mode = \"python\"\ntimeout_ms = 1000");
    let text = "{\"a\":1}\n{\"a\":2}\n  continued\n";
    let mut bs = batches(text, 2);
    let out = j.join(bs.remove(0));
    assert_eq!(out.lines.len(), 1);
    assert_eq!(j.held_offset(), Some(8), "the second line is held");
    let out = j.join(bs.remove(0));
    assert!(out.lines.is_empty(), "still held: it may go on");
    assert_eq!(j.held_offset(), Some(8));
    let deadline = j.deadline().unwrap();
    assert!(deadline > Instant::now());
    let b = j.flush(&"t".into()).unwrap();
    assert_eq!(b.line(&b.lines[0]), b"{\"a\":2}\n  continued");
    assert!(!j.has_pending());
    assert_eq!(j.held_offset(), None);
}

#[test]
fn config_errors_name_the_field() {
    let e = |t: &str| {
        toml::from_str::<MultilineConfig>(t)
            .map_err(|e| e.to_string())
            .and_then(|c| c.compile().map(|_| ()))
            .unwrap_err()
    };
    assert!(e("").contains("needs `mode`"));
    assert!(e("mode = \"python\"\nstart = 'x'").contains("not both"));
    assert!(e("start = '('").starts_with("multiline.start: invalid regex"));
    assert!(e("mode = \"cobol\"").contains("unknown variant `cobol`"));
    assert!(e("mode = \"go\"\nmax_lines = 0").contains("max_lines"));
    assert!(e("mode = \"go\"\nlines = 3").contains("unknown field `lines`"));
}

proptest::proptest! {
    /// Whatever the bytes and the batch size, every line lands in exactly one event, in order.
    #[test]
    fn every_line_is_in_exactly_one_event(
        lines in proptest::collection::vec("[ a-zA-Z{}:\\t]{0,12}", 0..40),
        per in 1usize..6,
    ) {
        let mut text = String::new();
        for l in &lines {
            text.push_str(l);
            text.push('\n');
        }
        for mode in ["python", "java", "go"] {
            let (mut j, _) = joiner(&format!("mode = \"{mode}\""));
            let got = events(&mut j, &text, per);
            let rejoined: Vec<String> = got.iter().map(|(t, _)| t.clone()).collect();
            proptest::prop_assert_eq!(rejoined.join("\n"), lines.join("\n"));
        }
    }
}

#[test]
fn a_joined_json_event_is_one_valid_document_with_its_exception() {
    let lines: Vec<&str> = PYTHON.lines().collect();
    let joined = lines[1..16].join("\n");
    let ev = crate::sink::SinkEvent {
        id: "1".into(),
        line: joined.clone(),
        timestamp: 0,
        level: crate::event::Level::Error,
        component: None,
        message: "Task failed".into(),
        trace_id: "t2".into(),
        is_json: true,
        attrs: Vec::new(),
        source: "t".into(),
        ack: None,
        received: 0,
        span: None,
    };
    let mut body = Vec::new();
    ev.write_document(&mut body).unwrap();
    assert!(!body.contains(&b'\n'), "one document, one line");
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let exception = doc["exception"].as_str().unwrap();
    assert!(exception.starts_with("Traceback (most recent call last):\n  File "));
    assert!(exception.ends_with("ValueError: lookup failed"));
    assert_eq!(doc["metadata"]["error_type"], "ValueError");
    assert_eq!(ev.document()["exception"], doc["exception"]);
}

/// stdin and TCP: a read that waits past the held event's deadline ends (a tick, not the end),
/// so the source emits the event; the real end is told apart.
#[tokio::test(start_paused = true)]
async fn a_silent_stream_gives_up_its_held_event_at_the_deadline() {
    use tokio::io::AsyncWriteExt;
    let (mut client, server) = tokio::io::duplex(1024);
    let mut r = super::super::LineReader::following(Quiet::new(server), "t".into(), 100, 0);
    let (mut j, _) = joiner("mode = \"python\"\ntimeout_ms = 1000");
    client.write_all(b"{\"a\":1}\n  more\npart").await.unwrap();
    let b = r.next_batch().await.unwrap().unwrap();
    assert!(j.join(b).lines.is_empty(), "held");
    r.get_mut().set_deadline(j.deadline());
    let start = Instant::now();
    assert!(r.next_batch().await.unwrap().is_none());
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert!(r.get_mut().take_tick());
    assert!(!r.get_mut().at_end());
    let b = j.flush(&"t".into()).unwrap();
    assert_eq!(b.line(&b.lines[0]), b"{\"a\":1}\n  more");
    // Without a deadline a read waits for data; the partial line is still there.
    r.get_mut().set_deadline(j.deadline());
    client.write_all(b"ial\n").await.unwrap();
    drop(client);
    let b = r.next_batch().await.unwrap().unwrap();
    assert_eq!(b.line(&b.lines[0]), b"partial");
    assert!(r.next_batch().await.unwrap().is_none());
    assert!(!r.get_mut().take_tick());
    assert!(r.get_mut().at_end());
}

#[test]
fn every_source_type_takes_multiline_and_checks_it() {
    #[derive(Deserialize)]
    struct T {
        sources: Vec<crate::source::SourceConfig>,
    }
    let t: T = toml::from_str(
        r#"
[[sources]]
type = "stdin"
multiline = { mode = "python" }
[[sources]]
type = "file"
paths = ["/var/log/app/*.log"]
multiline = { start = '^\{', continuation = '^\s', timeout_ms = 1000, max_lines = 500, max_bytes = 65536 }
[[sources]]
type = "tcp"
multiline = { mode = "java", max_lines = 50 }
"#,
    )
    .unwrap();
    for s in &t.sources {
        assert!(s.multiline().is_some());
        s.check().unwrap();
    }
    let t: T = toml::from_str("[[sources]]\ntype = \"tcp\"\nmultiline = { continuation = '[' }\n")
        .unwrap();
    let e = t.sources[0].check().unwrap_err();
    assert!(
        e.starts_with("multiline.continuation: invalid regex"),
        "{e}"
    );
}
