//! Generated reference: `weir completions`, `weir man`, `weir generate config-reference`.

use std::process::Command;

use crate::util::weir;

fn stdout_of(args: &[&str]) -> String {
    let out = weir().args(args).output().expect("weir runs");
    assert!(
        out.status.success(),
        "weir {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

const SUBCOMMANDS: [&str; 9] = [
    "run",
    "validate",
    "test",
    "generate",
    "tap",
    "top",
    "health",
    "completions",
    "man",
];

#[test]
fn bash_completions_name_the_subcommands_and_load_in_bash() {
    let script = stdout_of(&["completions", "bash"]);
    for sub in SUBCOMMANDS {
        assert!(
            script.contains(&format!(" {sub} ")) || script.contains(&format!("{sub})")),
            "bash completions lack subcommand {sub}"
        );
    }
    assert!(script.contains("--config"), "bash completions lack options");
    if !on_path("bash") {
        eprintln!("SKIPPED: bash not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("weir.bash");
    std::fs::write(&path, &script).expect("write script");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p weir", path.display()))
        .output()
        .expect("bash runs");
    let registered = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && registered.contains("weir"),
        "bash did not register the completion: {registered} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn zsh_and_fish_completions_are_generated() {
    let zsh = stdout_of(&["completions", "zsh"]);
    assert!(
        zsh.starts_with("#compdef weir"),
        "zsh script: {}",
        &zsh[..zsh.len().min(80)]
    );
    assert!(zsh.contains("'validate:"), "zsh completions lack validate");
    let fish = stdout_of(&["completions", "fish"]);
    assert!(
        fish.contains("complete -c weir"),
        "fish script lacks `complete -c weir`"
    );
    assert!(
        fish.contains("-a \"validate\""),
        "fish completions lack validate"
    );
    for (shell, script) in [("zsh", &zsh), ("fish", &fish)] {
        if !on_path(shell) {
            eprintln!("SKIPPED: {shell} not installed, syntax not checked");
            continue;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("weir.completion");
        std::fs::write(&path, script).expect("write script");
        let out = Command::new(shell)
            .arg("-n")
            .arg(&path)
            .output()
            .expect("shell runs");
        assert!(
            out.status.success(),
            "{shell} -n refused the script: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn completions_refuse_an_unknown_shell() {
    let out = weir()
        .args(["completions", "tcsh"])
        .output()
        .expect("weir runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tcsh") && err.contains("bash"), "{err}");
}

#[test]
fn man_page_is_roff_and_renders() {
    let page = stdout_of(&["man"]);
    assert!(
        page.starts_with(".TH"),
        "not roff: {}",
        &page[..page.len().min(80)]
    );
    assert!(page.contains("weir"));
    for sub in ["run", "validate", "completions"] {
        assert!(page.contains(sub), "man page lacks subcommand {sub}");
    }
    if !on_path("man") {
        eprintln!("SKIPPED: man not installed, rendering not checked");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("weir.1");
    std::fs::write(&path, &page).expect("write page");
    let out = Command::new("man")
        .arg("-l")
        .arg(&path)
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .expect("man runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "man -l failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("NAME") && text.contains("SYNOPSIS"), "{text}");
    assert!(!text.contains(".TH"), "roff left unrendered: {text}");
}

#[test]
fn config_reference_is_written_to_a_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("schema.json");
    let md = dir.path().join("configuration.md");
    let out = weir()
        .args(["generate", "config-reference", "--format", "json", "-o"])
        .arg(&json)
        .output()
        .expect("weir runs");
    assert!(out.status.success());
    let out = weir()
        .args(["generate", "config-reference", "-o"])
        .arg(&md)
        .output()
        .expect("weir runs");
    assert!(out.status.success());
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("schema written"))
            .expect("schema is JSON");
    assert_eq!(schema["title"], "weir pipeline file");
    assert!(schema["properties"]["sources"].is_object());
    let text = std::fs::read_to_string(&md).expect("markdown written");
    assert!(text.starts_with("# Configuration reference"));
    // The checked-in files are what the binary writes (the unit tests check the library).
    let root = env!("CARGO_MANIFEST_DIR");
    let checked_in = std::fs::read_to_string(format!("{root}/docs/configuration.md"))
        .expect("docs/configuration.md is checked in");
    assert!(
        checked_in == text,
        "docs/configuration.md is stale: run `cargo run -- {}`",
        weir::reference::REGENERATE.trim_start_matches("weir ")
    );
}
