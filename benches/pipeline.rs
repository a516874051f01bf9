//! Parse + derive throughput of the default pipeline on generated agent-system lines, in lines/s,
//! beside two baselines measured in the same run: decoding each line into a full
//! `serde_json::Value` tree (what a naive pipeline does before it even derives anything), and
//! merely finding the line ends (the floor).
//!
//! A second group runs the text-format examples (`pipelines/examples/nginx-combined.toml`:
//! regex; `logfmt.toml`: logfmt) and `nginx-json.toml` on their fixtures, repeated to 100,000
//! lines, for the cost of a text parser against JSON on the same requests.
//!
//! `cargo bench --bench pipeline`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use weir::generate::{demo_logs, DemoOptions};
use weir::processor::Processor;
use weir::source::LineBatch;
use weir::telemetry::SelfMetrics;

const LINES: u64 = 100_000;

fn batches(corpus: &[u8]) -> Vec<LineBatch> {
    let mut out = Vec::new();
    let lines: Vec<&[u8]> = corpus.split_inclusive(|&b| b == b'\n').collect();
    for chunk in lines.chunks(500) {
        let mut batch = LineBatch::new(Arc::from("bench"));
        for line in chunk {
            batch.push(&line[..line.len() - 1], false, None);
            batch.bytes_read += line.len() as u64;
        }
        out.push(batch);
    }
    out
}

fn bench(c: &mut Criterion) {
    let mut corpus = Vec::new();
    let opts = DemoOptions {
        count: LINES,
        seed: 42,
        malformed_rate: 0.0,
        rate: 0.0,
        live: false,
        incidents: false,
    };
    demo_logs(&opts, &mut corpus).expect("generate");
    let batches = batches(&corpus);
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(LINES));
    g.sample_size(20);
    g.bench_function("parse_derive_default_pipeline", |b| {
        b.iter_batched(
            || {
                let selfm = SelfMetrics::new();
                let p = weir::config::load(None, &selfm).expect("default pipeline");
                Processor::new(p.parser, p.deriver, selfm)
            },
            |mut proc| {
                for batch in &batches {
                    proc.process(batch);
                }
                proc
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("baseline_serde_json_value_per_line", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for batch in &batches {
                for (line, _) in batch.iter() {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) {
                        n += v.as_object().map_or(0, |o| o.len());
                    }
                }
            }
            n
        })
    });
    g.bench_function("baseline_find_line_ends", |b| {
        b.iter(|| memchr::memchr_iter(b'\n', &corpus).count())
    });
    g.finish();
}

/// `pipelines/examples/NAME.toml` compiled, and its fixture repeated to [`LINES`] lines.
fn example(name: &str, fixture: &str) -> (weir::config::CompiledPipeline, Vec<LineBatch>) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/examples");
    let cfg = root.join(format!("{name}.toml"));
    let selfm = SelfMetrics::new();
    let p = weir::config::load(Some(&cfg), &selfm).expect("example pipeline");
    let one = std::fs::read(root.join("fixtures").join(fixture)).expect("fixture");
    let lines: Vec<&[u8]> = one.split_inclusive(|&b| b == b'\n').collect();
    let mut corpus = Vec::new();
    for line in lines.iter().cycle().take(LINES as usize) {
        corpus.extend_from_slice(line);
    }
    (p, batches(&corpus))
}

fn bench_text_formats(c: &mut Criterion) {
    let mut g = c.benchmark_group("text_formats");
    g.throughput(Throughput::Elements(LINES));
    g.sample_size(10);
    for (name, fixture) in [
        ("nginx-combined", "nginx/access.log"),
        ("nginx-json", "nginx/access.json.log"),
        ("logfmt", "logfmt/app.log"),
    ] {
        let (_, batches) = example(name, fixture);
        g.bench_function(format!("parse_derive_{name}"), |b| {
            b.iter_batched(
                || {
                    let (p, _) = example(name, fixture);
                    Processor::new(p.parser, p.deriver, SelfMetrics::new())
                },
                |mut proc| {
                    for batch in &batches {
                        proc.process(batch);
                    }
                    proc
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench, bench_text_formats);
criterion_main!(benches);
