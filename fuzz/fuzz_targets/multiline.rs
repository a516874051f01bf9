//! Multi-line joining (source::multiline::Joiner) with each built-in rule and a custom one, on
//! any lines split into batches anywhere. Invariants checked: a joined event is at most
//! `max_bytes` long (a single line is kept whole), and events never outnumber lines.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use weir::source::multiline::{Multiline, MultilineConfig, MultilineMode};
use weir::source::LineBatch;

/// The rule and limits a head byte selects, compiled once (compiling the regexes per input
/// would be most of the work).
fn rule(head: u8) -> &'static (MultilineConfig, Multiline) {
    static RULES: OnceLock<Vec<(MultilineConfig, Multiline)>> = OnceLock::new();
    let all = RULES.get_or_init(|| {
        (0..64u8)
            .map(|h| {
                let mut cfg = match h & 3 {
                    0 => MultilineConfig::mode(MultilineMode::Python),
                    1 => MultilineConfig::mode(MultilineMode::Java),
                    2 => MultilineConfig::mode(MultilineMode::Go),
                    _ => MultilineConfig {
                        mode: None,
                        start: Some(r"^\d{4}-".into()),
                        continuation: Some(r"^\s".into()),
                        ..MultilineConfig::mode(MultilineMode::Python)
                    },
                };
                cfg.max_lines = [1usize, 3, 500, 2][usize::from((h >> 2) & 3)];
                cfg.max_bytes = [16usize, 256, 1 << 20, 1][usize::from((h >> 4) & 3)];
                let compiled = cfg.compile().expect("the fuzz rules compile");
                (cfg, compiled)
            })
            .collect()
    });
    &all[usize::from(head & 63)]
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let (cfg, compiled) = rule(head);
    let max_line_bytes = 4096;
    let max_bytes = cfg.max_bytes.min(max_line_bytes);
    let mut joiner = compiled.joiner_uncounted(max_line_bytes);
    let source: Arc<str> = Arc::from("fuzz");
    let (mut lines_in, mut events_out) = (0usize, 0usize);
    let check = |b: &LineBatch| {
        for (event, _) in b.iter() {
            // A first line is kept whole (it is at most max_line_bytes); a joined event stays
            // within max_bytes.
            assert!(
                event.len() <= max_line_bytes,
                "event of {} bytes",
                event.len()
            );
            if event.contains(&b'\n') {
                assert!(
                    event.len() <= max_bytes,
                    "joined event of {} bytes over {max_bytes}",
                    event.len()
                );
            }
        }
        b.lines.len()
    };
    // A 0xFF byte ends a batch: batches split anywhere between lines.
    for part in rest.split(|&b| b == 0xFF) {
        let mut batch = LineBatch::new(source.clone());
        for line in part.split(|&b| b == b'\n') {
            batch.push(
                &line[..line.len().min(max_line_bytes)],
                line.len() > max_line_bytes,
                None,
            );
            lines_in += 1;
        }
        let out = joiner.join(batch);
        events_out += check(&out);
    }
    if let Some(out) = joiner.flush(&source) {
        events_out += check(&out);
    }
    assert!(
        events_out <= lines_in,
        "{events_out} events from {lines_in} lines"
    );
    assert!(
        lines_in == 0 || events_out > 0,
        "{lines_in} lines gave no event"
    );
});
