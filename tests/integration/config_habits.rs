//! Configuration habits: `${VAR}` in pipeline files (run, validate, test) and the positional
//! FILE of `weir validate` and `weir test`.

use std::process::Output;

use crate::util::{parse_exposition, temp_file, weir};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const WITH_VARS: &str = r#"# a commented-out ${OLD_TOKEN} needs no variable
[[metrics]]
name = "${METRIC_PREFIX:-demo}_errors_total"
kind = "counter"
when = 'level == "${ERROR_LEVEL}"'

[[tests]]
name = "errors counted"
input = ['{"level":"ERROR","message":"x"}', '{"level":"INFO","message":"y"}']
[tests.expect.metrics]
'${METRIC_PREFIX:-demo}_errors_total' = 1
"#;

#[test]
fn validate_and_test_take_the_file_positionally_or_with_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = temp_file(dir.path(), "p.toml", WITH_VARS.as_bytes());
    for args in [vec!["validate"], vec!["validate", "--config"]] {
        let out = weir()
            .args(&args)
            .arg(&p)
            .env("ERROR_LEVEL", "ERROR")
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert_eq!(
            stdout(&out),
            format!("{}: ok (1 metrics, 0 alerts, 0 notifiers)\n", p.display())
        );
    }
    // Two files positionally, a third with --config: all three run.
    let out = weir()
        .current_dir(dir.path())
        .args(["test", "p.toml", "p.toml", "--config", "p.toml"])
        .env("ERROR_LEVEL", "ERROR")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).matches("p.toml: 1 test").count(),
        3,
        "{}",
        stdout(&out)
    );
    // Neither: a usage error (exit 2) that names the FILE argument.
    for cmd in ["validate", "test"] {
        let out = weir().arg(cmd).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        assert!(stderr(&out).contains("FILE"), "{cmd}: {}", stderr(&out));
    }
}

#[test]
fn an_unset_variable_is_an_error_at_its_place_in_validate_test_and_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = temp_file(dir.path(), "p.toml", WITH_VARS.as_bytes());
    let want = format!(
        "error: {}:5:19: environment variable `ERROR_LEVEL` is not set; set it, or give a \
         default: `${{ERROR_LEVEL:-default}}`\n  |\n5 | when = 'level == \"${{ERROR_LEVEL}}\"'\n  \
         |                   ^\n",
        p.display()
    );
    for args in [
        vec!["validate"],
        vec!["test"],
        vec!["run", "--oneshot", "--config"],
    ] {
        let out = weir()
            .args(&args)
            .arg(&p)
            .env_remove("ERROR_LEVEL")
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), want, "{args:?}");
    }
}

#[test]
fn variables_reach_the_running_pipeline_and_secrets_stay_out_of_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = temp_file(dir.path(), "p.toml", WITH_VARS.as_bytes());
    let input = temp_file(
        dir.path(),
        "in.log",
        b"{\"level\":\"WARNING\",\"message\":\"a\"}\n{\"level\":\"ERROR\",\"message\":\"b\"}\n",
    );
    let out = weir()
        .args(["run", "--oneshot", "--config"])
        .arg(&p)
        .arg(&input)
        .env("ERROR_LEVEL", "WARNING")
        .env("METRIC_PREFIX", "app")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let got = parse_exposition(&stdout(&out));
    assert_eq!(
        got.get(&("app_errors_total".to_string(), Default::default())),
        Some(&1.0),
        "{}",
        stdout(&out)
    );
    // A secret in a key of the wrong type: the error quotes the file, not the value.
    let p = temp_file(
        dir.path(),
        "secret.toml",
        b"[event]\nmax_line_bytes = \"${API_TOKEN}\"\n",
    );
    let out = weir()
        .arg("validate")
        .arg(&p)
        .env("API_TOKEN", "s3cr3t-value")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(!err.contains("s3cr3t"), "{err}");
    assert!(
        err.contains("2 | max_line_bytes = \"${API_TOKEN}\""),
        "{err}"
    );
}
