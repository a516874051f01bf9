//! The physical floor for weir's parse, on one core: the fastest validating pass over every line
//! of a corpus (`serde_json::from_slice::<IgnoredAny>` per line: every byte checked as JSON,
//! nothing built), and the newline scan alone (`memchr`). `benches/ratios.sh` runs it beside
//! weir on the same file and prints weir's time as a multiple of it.
//!
//! `cargo bench --bench floor -- FILE` prints `floor_json_s=… floor_newlines_s=… lines=…`
//! (the best of 3 passes over the file held in memory).

use std::time::Instant;

use serde::de::IgnoredAny;

fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::INFINITY;
    let mut out = None;
    for _ in 0..runs {
        let t = Instant::now();
        let v = f();
        best = best.min(t.elapsed().as_secs_f64());
        out = Some(v);
    }
    (best, out.expect("at least one run"))
}

fn main() {
    // `cargo bench` passes `--bench`; the file is the one argument that is not a flag.
    let Some(path) = std::env::args().skip(1).find(|a| !a.starts_with("--")) else {
        eprintln!("usage: cargo bench --bench floor -- FILE");
        std::process::exit(2);
    };
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(1);
        }
    };
    let (newlines_s, lines) = best_of(3, || memchr::memchr_iter(b'\n', &data).count());
    let (json_s, valid) = best_of(3, || {
        data.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .filter(|l| serde_json::from_slice::<IgnoredAny>(l).is_ok())
            .count()
    });
    println!("floor_json_s={json_s:.3} floor_newlines_s={newlines_s:.3} lines={lines} valid_json={valid}");
}
