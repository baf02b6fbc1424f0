//! The deployment files (Dockerfile, deploy/, terraform/) pass the offline
//! checks of `deploy/check.py`: Terraform references and module interfaces,
//! `terraform fmt`/`validate` where available, Kubernetes manifests rendered
//! per region, systemd units, zenoh configs and the Dockerfile. See
//! deploy/README.md for what is (and is not) validated.

mod common;

use std::process::Command;
use std::time::Instant;

#[test]
fn deployment_files_pass_the_offline_checks() {
    let Some(python) = common::installed_tool(
        "deploy-venv/bin/python",
        "PRSCD_REQUIRE_DEPLOY_TOOLS",
        "deploy/install-checkers.sh",
    ) else {
        return;
    };
    let root = env!("CARGO_MANIFEST_DIR");
    let started = Instant::now();
    let out = Command::new(&python)
        .arg(format!("{root}/deploy/check.py"))
        .args(["--root", root])
        .output()
        .expect("run deploy/check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    println!(
        "deploy/check.py took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        out.status.success() && failed.is_empty(),
        "deploy/check.py failed ({}):\n{}",
        out.status,
        failed.join("\n")
    );
    assert!(
        stdout.lines().filter(|l| l.starts_with("ok")).count() > 50,
        "deploy/check.py checked too little"
    );
}
