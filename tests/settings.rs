//! `prscd --help` is the reference of the settings: it lists each one with
//! its environment variable and default, and `env.example` must document the
//! same variables with the same defaults. The environment is read as it
//! always was: `.env` too, a blank variable is unset, numbers may carry
//! blanks, and a bad value names its variable. Runs the real binary; no
//! node is started.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `prscd` in an empty directory with only `env` as its environment.
fn prscd(env: &[(&str, &str)], args: &[&str], dot_env: Option<&str>) -> Output {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "settings-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    if let Some(text) = dot_env {
        std::fs::write(dir.join(".env"), text).unwrap();
    }
    let mut child = Command::new(common::binary())
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Each case ends before a node would start; one that starts is a
    // failure, not a hang.
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// Each setting in `--help`: its variable and its default, if it has one.
fn settings_in_help(help: &str) -> BTreeMap<String, Option<String>> {
    let mut settings = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines().map(str::trim) {
        if line.starts_with('-') {
            current = None;
        } else if let Some(rest) = line.strip_prefix("[env: ") {
            // `[env: NAME=value]`, or `[env: NAME]` for a secret.
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            settings.insert(name.clone(), None);
            current = Some(name);
        } else if let Some(rest) = line.strip_prefix("[default: ") {
            let name = current.clone().expect("[default] after [env]");
            settings.insert(name, Some(rest.trim_end_matches(']').to_owned()));
        }
    }
    settings
}

/// Each variable in `env.example`, with its value where the line is not a
/// comment (a default, or an example for settings without one).
fn variables_in_env_example() -> BTreeMap<String, Option<String>> {
    let text = include_str!("../env.example");
    let is_name = |n: &str| {
        n.starts_with(|c: char| c.is_ascii_uppercase())
            && n.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    };
    let mut variables = BTreeMap::new();
    for line in text.lines() {
        let (commented, body) = match line.strip_prefix('#') {
            Some(rest) => (true, rest.trim_start()),
            None => (false, line.trim()),
        };
        // `NAME=value` lines, and the deprecated ones listed as `A=  B=`.
        let starts_as_variable = body.split_once('=').is_some_and(|(n, _)| is_name(n));
        if !starts_as_variable {
            continue;
        }
        for token in body.split_whitespace() {
            if let Some((name, value)) = token.split_once('=').filter(|(n, _)| is_name(n)) {
                let value = (!commented).then(|| value.to_owned());
                variables.insert(name.to_owned(), value);
            }
        }
    }
    variables
}

#[test]
fn help_and_env_example_name_the_same_settings_and_defaults() {
    let out = prscd(&[], &["--help"], None);
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    let settings = settings_in_help(&help);
    assert!(
        settings.len() > 40,
        "{} settings in --help:\n{help}",
        settings.len()
    );
    let documented = variables_in_env_example();
    // Read by the tracing set-up and the OpenTelemetry SDK, not settings:
    // `--help` lists them after the settings.
    let tracing_help = help
        .split_once("Tracing and logs")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no tracing variables in --help:\n{help}"));

    let mut problems = Vec::new();
    for name in settings.keys() {
        if !documented.contains_key(name) {
            problems.push(format!("{name} is a setting but not in env.example"));
        }
    }
    for (name, value) in &documented {
        match settings.get(name) {
            None if tracing_help.contains(&format!("  {name} ")) => {}
            None => problems.push(format!(
                "{name} is in env.example but neither a setting nor a tracing variable of --help"
            )),
            Some(Some(default)) => {
                if let Some(value) = value.as_ref().filter(|v| *v != default) {
                    problems.push(format!(
                        "{name}: env.example says {value}, the default is {default}"
                    ));
                }
            }
            Some(None) => {}
        }
    }
    assert!(
        problems.is_empty(),
        "env.example and `prscd --help` disagree:\n  {}",
        problems.join("\n  ")
    );
    // Secrets never show in --help, even when set.
    let out = prscd(
        &[("ADMIN_TOKEN", "secret-admin-token-1234")],
        &["--help"],
        None,
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("secret-admin-token"));
}

/// The settings are checked before anything starts: a configuration error
/// exits with status 2 and a message; `name` must be in it.
fn refused(env: &[(&str, &str)], dot_env: Option<&str>, name: &str) -> String {
    let out = prscd(env, &[], dot_env);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{env:?}: {stderr}");
    assert!(stderr.contains(name), "{env:?}: {stderr}");
    stderr
}

#[test]
fn the_environment_is_read_as_before() {
    // A bad value names its variable and the value.
    let e = refused(&[("PORT", "http")], None, "PORT");
    assert!(e.contains("http"), "{e}");
    refused(&[("IDLE_TIMEOUT_MS", "30s")], None, "IDLE_TIMEOUT_MS");
    // Blank is unset and numbers may carry blanks: the checks after parsing
    // are reached, and they name MAX_MESSAGE_SIZE.
    refused(
        &[
            ("PORT", "  "),
            ("METRICS_PORT", " 9464 "),
            ("MESH_BACKLOG", ""),
            ("MAX_MESSAGE_SIZE", "0"),
        ],
        None,
        "MAX_MESSAGE_SIZE",
    );
    // `.env` is read, and the environment wins over it.
    refused(&[], Some("MAX_MESSAGE_SIZE=0\n"), "MAX_MESSAGE_SIZE");
    refused(
        &[("MAX_MESSAGE_SIZE", "0")],
        Some("MAX_MESSAGE_SIZE=1024\n"),
        "MAX_MESSAGE_SIZE",
    );
    // A flag wins over the environment.
    let out = prscd(
        &[("PORT", "http")],
        &["--port", "8443", "--max-message-size=0"],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("MAX_MESSAGE_SIZE"), "{stderr}");
}
