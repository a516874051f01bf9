//! Docker json-file and CRI envelopes (parse::container), including partial lines joined
//! across entries, in each format. Input: first byte = format and limit, the rest = lines.
//! Invariant checked: no output line is longer than `max_line_bytes`.
#![no_main]

use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use weir::parse::container::ContainerDecoder;
use weir::source::{Format, LineBatch};

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let format = match head & 3 {
        0 => Format::Docker,
        1 => Format::Cri,
        2 => Format::Auto,
        _ => Format::Json,
    };
    // Small limits reach the cut paths; large ones leave lines whole.
    let max_line_bytes = [8usize, 64, 1024, 1 << 20][usize::from((head >> 2) & 3)];
    let path = Path::new("/var/log/pods/ns_pod_0123/container/0.log");
    let counter = prometheus::IntCounter::new("invalid", "invalid").expect("a valid metric name");
    let mut dec = ContainerDecoder::new(format, Some(path), max_line_bytes, counter);
    let source: Arc<str> = Arc::from("fuzz");
    let mut out = LineBatch::new(source.clone());
    // Two batches, so state carried between batches (partials) is exercised.
    let mid = rest.len() / 2;
    let mid = rest[mid..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(rest.len(), |i| mid + i + 1);
    for part in [&rest[..mid], &rest[mid..]] {
        let mut raw = LineBatch::new(source.clone());
        for line in part.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let cut = line.len() > max_line_bytes;
            raw.push(&line[..line.len().min(max_line_bytes)], cut, None);
        }
        dec.decode(&raw, &mut out);
    }
    dec.flush(&mut out);
    for (line, _) in out.iter() {
        assert!(
            line.len() <= max_line_bytes,
            "line of {} bytes over {max_line_bytes}",
            line.len()
        );
    }
});
