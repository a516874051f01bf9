//! The pipeline loader: `PipelineConfig::parse` (TOML, `${VAR}` interpolation) then `compile`
//! (conditions, regexes, metrics, alert rules, sinks' checks). What `weir validate` does, on
//! any text: a located error or a pipeline, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::telemetry::SelfMetrics;
use weir::PipelineConfig;

const ENV: &[(&str, &str)] = &[("HOST", "loki:3100"), ("TOKEN", "s3cret")];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = PipelineConfig::parse_with_env("fuzz.toml", text, ENV) {
        let _ = cfg.compile("fuzz.toml", text, &SelfMetrics::new());
    }
});
