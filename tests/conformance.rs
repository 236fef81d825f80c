//! The HTTP API against docs/openapi.json, property-based: runs `scripts/conformance`
//! (schemathesis against a live node with the demo config) and fails on any 5xx or any
//! answer the document does not describe. Skipped, with a message saying so, where
//! schemathesis is not installed (`.ci/run` and `scripts/test` install it best-effort).
//!
//! Bounds: `CONFORMANCE_MAX_EXAMPLES` cases per operation and `CONFORMANCE_MAX_TIME`
//! seconds (see the script); the seed is fixed, so a failure reproduces.

use std::path::Path;
use std::process::Command;

fn schemathesis_installed() -> bool {
    Command::new("python3")
        .args(["-c", "import schemathesis"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_api_conforms_to_its_openapi_document_under_generated_requests() {
    if !schemathesis_installed() {
        eprintln!(
            "SKIPPED conformance: schemathesis is not importable by python3 \
             (python3 -m pip install schemathesis)"
        );
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("python3")
        .arg(root.join("scripts/conformance"))
        .env("LATCH_BIN", testkit::cli::latch_bin())
        .status()
        .expect("run scripts/conformance");
    assert!(
        status.success(),
        "scripts/conformance failed ({status}): see the schemathesis report above"
    );
}
