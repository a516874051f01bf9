//! Alert rule expressions (alert::expr::parse): any text gives a rule or an error, never a
//! panic or a stack overflow.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rule) = weir::alert::expr::parse(src) {
        let _ = rule.metrics();
        let _ = rule.for_duration();
    }
    let _ = weir::alert::expr::parse_duration(src);
});
