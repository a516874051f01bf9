//! logfmt and regex lines, through the `[parser]` chain (logfmt, then regex, then JSON), and
//! `parse::logfmt::parse` directly. Must never panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weir::config::CompiledPipeline;
use weir::parse::line_text;
use weir::telemetry::SelfMetrics;
use weir::PipelineConfig;

const PIPELINE: &str = r#"
[parser]
format = "logfmt"
fallback = ["regex", "json"]
pattern = '^(?P<timestamp>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?P<level>[A-Z]+) (?P<component>[^:\s]+): (?P<message>(?:(?P<method>[A-Z]+) (?P<path>\S+) -> (?P<status>\d{3}) in (?P<duration_ms>[0-9.]+)ms)?.*)$'
types = { status = "int", duration_ms = "float" }

[event]
timestamp = ["time", "timestamp"]
level = ["level"]
message = ["msg", "message"]
component = ["component"]
trace_id = ["request_id"]

[[metrics]]
name = "lines_total"
kind = "counter"
help = "Lines."
when = 'status >= 500 || exists(error)'
labels = { method = "method" }

[[metrics]]
name = "duration_seconds"
kind = "histogram"
help = "Durations."
value = "duration_ms"
buckets = [0.1, 1, 10]
"#;

fn pipeline() -> &'static CompiledPipeline {
    static P: OnceLock<CompiledPipeline> = OnceLock::new();
    P.get_or_init(|| {
        PipelineConfig::parse("fuzz.toml", PIPELINE)
            .and_then(|c| c.compile("fuzz.toml", PIPELINE, &SelfMetrics::new()))
            .expect("the fuzz pipeline compiles")
    })
}

fuzz_target!(|data: &[u8]| {
    let p = pipeline();
    let mut issue = |_| {};
    let text = line_text(data, false, &mut issue);
    let mut pairs = 0usize;
    let _ = weir::parse::logfmt::parse(&text, |_, _| pairs += 1);
    let mut scratch = String::new();
    let ev = p.parser.parse_line(&text, &mut scratch, &[], 0, &mut issue);
    let _ = ev.fields();
});
