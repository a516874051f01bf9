//! The JSON path of the line parser (selective capture, repair of unescaped messages, the event
//! fields) and the deriver behind it, on the default pipeline: any bytes, as the processor
//! sees them. Must never panic; an event must always come out.
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use weir::config::CompiledPipeline;
use weir::parse::line_text;
use weir::telemetry::SelfMetrics;

fn pipeline() -> &'static Mutex<CompiledPipeline> {
    static P: OnceLock<Mutex<CompiledPipeline>> = OnceLock::new();
    P.get_or_init(|| {
        let p =
            weir::config::load(None, &SelfMetrics::new()).expect("the embedded pipeline compiles");
        Mutex::new(p)
    })
}

fuzz_target!(|data: &[u8]| {
    let mut p = pipeline().lock().unwrap_or_else(|e| e.into_inner());
    let p = &mut *p;
    let mut issue = |_| {};
    let text = line_text(data, false, &mut issue);
    let mut scratch = String::new();
    let ev = p.parser.parse_line(&text, &mut scratch, &[], 0, &mut issue);
    let _ = ev.fields();
    p.deriver.apply(&ev, 0);
});
