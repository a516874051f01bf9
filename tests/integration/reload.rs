//! Hot reload under load: numbered lines stream through weir while its pipeline file is
//! changed (SIGHUP) and then broken (`POST /-/reload`): every line comes out exactly once and
//! in order, the counter of the unchanged metric never restarts, the new metric counts from the
//! reload on, and the broken file changes nothing.

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use crate::support::server::wait_for;
use crate::util::{metric, spawn_weir};

const A: &str = r#"
[[metrics]]
name = "seen_total"
kind = "counter"

[[metrics]]
name = "a_total"
kind = "counter"
when = 'kind == "a"'
"#;

const B: &str = r#"
[[metrics]]
name = "seen_total"
kind = "counter"

[[metrics]]
name = "b_total"
kind = "counter"
when = 'kind == "b"'
"#;

fn post(addr: &str, path: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("http://{addr}{path}"))
            .send()
            .await
            .expect("POST");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    })
}

#[test]
fn reload_under_load_loses_nothing_and_keeps_counters() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("p.toml");
    std::fs::write(&config, A).unwrap();
    let config_arg = config.display().to_string();
    let mut weir = spawn_weir(&["--config", &config_arg, "--stdout"]);
    let addr = weir.addr.clone();
    let pid = weir.child.id();
    let mut input = weir.child.stdin.take().unwrap();
    let output = weir.child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(output)
            .lines()
            .map(|l| l.unwrap())
            .collect::<Vec<String>>()
    });
    const N: usize = 60_000;
    let line = |i: usize| {
        format!(
            "{{\"n\":{i},\"kind\":\"{}\"}}",
            if i % 2 == 0 { "a" } else { "b" }
        )
    };
    let mut write_range = |from: usize, to: usize| {
        for i in from..to {
            writeln!(input, "{}", line(i)).unwrap();
        }
        input.flush().unwrap();
    };
    write_range(0, 20_000);
    // Change the pipeline while lines flow: SIGHUP.
    std::fs::write(&config, B).unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    write_range(20_000, 40_000);
    wait_for(
        Duration::from_secs(30),
        || (metric(&addr, "weir_config_reloads_total", &[("result", "ok")]) == 1.0).then_some(()),
        || "the SIGHUP reload never happened".into(),
    );
    // A broken file: refused, with its place; the running pipeline stays.
    std::fs::write(
        &config,
        format!("{B}\n[[metrics]]\nname = \"c_total\"\nkind = \"countr\"\n"),
    )
    .unwrap();
    let (status, body) = post(&addr, "/-/reload");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("p.toml:"), "{body}");
    assert!(body.contains("countr"), "{body}");
    write_range(40_000, N);
    wait_for(
        Duration::from_secs(60),
        || (metric(&addr, "weir_events_total", &[("source", "stdin")]) == N as f64).then_some(()),
        || "not every line was processed".into(),
    );
    // Continuous: never reset by the reload.
    assert_eq!(metric(&addr, "seen_total", &[]), N as f64);
    let b = metric(&addr, "b_total", &[]);
    assert!(
        b > 0.0 && b <= 20_000.0,
        "b_total {b}: counts only lines after the reload"
    );
    assert_eq!(
        metric(&addr, "a_total", &[]),
        0.0,
        "a_total left the exposition"
    );
    assert_eq!(
        metric(&addr, "weir_config_reloads_total", &[("result", "error")]),
        1.0
    );
    assert_eq!(
        metric(&addr, "weir_config_reloads_total", &[("result", "ok")]),
        1.0
    );
    drop(input);
    assert!(weir.child.wait().unwrap().success());
    let out = reader.join().unwrap();
    assert_eq!(out.len(), N, "every line passed through exactly once");
    for (i, l) in out.iter().enumerate() {
        assert_eq!(*l, line(i), "line {i} in order");
    }
}

/// Without a pipeline file there is nothing to reload: a clear 400.
#[test]
fn reload_without_a_file_says_why() {
    let weir = spawn_weir(&[]);
    let (status, body) = post(&weir.addr, "/-/reload");
    assert_eq!(status, 400);
    assert!(body.contains("--config"), "{body}");
}
