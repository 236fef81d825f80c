//! The `latch` binary as a command: for CLI verbs (`check`, `revoke`, `store recover`, …)
//! run to completion, and for the server processes [`crate::TestServer`] starts.

use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;

use crate::DEADLINE;

/// The `latch` binary cargo built for this test run: next to the test executable's
/// directory (`target/<profile>/deps/<test>` → `target/<profile>/latch`). Cargo builds
/// a package's binaries before its integration tests, so it is always current.
pub fn latch_bin() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current test executable");
        let mut dir = exe.parent().expect("deps directory").to_path_buf();
        if dir.ends_with("deps") {
            dir.pop();
        }
        let bin = dir.join(format!("latch{}", std::env::consts::EXE_SUFFIX));
        assert!(
            bin.is_file(),
            "no latch binary at {} (testkit serves latch's integration tests only)",
            bin.display()
        );
        bin
    })
}

/// A `Command` for the latch binary with a clean `LATCH_*` environment.
pub fn latch_cmd() -> Command {
    let mut cmd = Command::new(latch_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("LATCH_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Same as [`latch_cmd`] but async (does not block the test runtime).
pub fn latch_cmd_async() -> tokio::process::Command {
    tokio::process::Command::from(latch_cmd())
}

/// Runs a CLI command to completion within [`DEADLINE`]; returns (status, stdout, stderr).
pub async fn run_cli(mut cmd: tokio::process::Command) -> (ExitStatus, String, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("CLI command did not finish within the deadline")
        .expect("run CLI");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
