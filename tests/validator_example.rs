//! The README's validator example (`examples/validator/validate.py`, Python with PyJWT)
//! against a real server: a fresh token is VALID; after each revocation the validator,
//! run again as a resource server refetching the list past `ttl`, says INVALID (polled
//! to a deadline, the delay logged). Skipped, saying so, where `python3` with PyJWT and
//! cryptography is missing (`pip install 'PyJWT[crypto]'`; `.ci/run` installs it).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use testkit::clients::{self, ORDERS_AUD};
use testkit::prelude::*;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/validator/validate.py"
);

fn python_ready() -> Result<(), String> {
    let out = Command::new("python3")
        .args(["-c", "import jwt, cryptography"])
        .output()
        .map_err(|e| format!("python3 not runnable: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Runs the validator on `token`: `Ok(true)` VALID, `Ok(false)` INVALID, `Err` anything
/// else (with its output).
fn validate(issuer: &str, token: &str) -> Result<bool, String> {
    let mut child = Command::new("python3")
        .args([SCRIPT, issuer, ORDERS_AUD])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(token.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match (out.status.code(), said.as_str()) {
        (Some(0), "VALID") => Ok(true),
        (Some(1), "INVALID") => Ok(false),
        _ => Err(format!(
            "validator: {:?} {said} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

#[tokio::test]
async fn the_readme_validator_sees_each_revocation_after_ttl() {
    if let Err(why) = python_ready() {
        eprintln!("SKIPPED: the validator example needs python3 with PyJWT and cryptography ({why}); pip install 'PyJWT[crypto]'");
        return;
    }
    // The issuer must be where latch answers: the validator follows the URIs it names.
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let s = TestServer::builder()
        .config(|c| {
            c.issuer = issuer.clone();
            c.listen = format!("127.0.0.1:{port}").parse().unwrap();
        })
        .raw_toml("[status_list]\nttl = \"1s\"\n")
        .start()
        .await;
    let orders = clients::orders();
    for how in ["rfc7009", "subject"] {
        let token = s.issue(&orders, &[]).await;
        let (iss, t) = (issuer.clone(), token.clone());
        let valid = tokio::task::spawn_blocking(move || validate(&iss, &t))
            .await
            .unwrap();
        assert_eq!(valid, Ok(true), "a fresh token");
        match how {
            "rfc7009" => s.revoke(&orders, &token).await,
            _ => {
                s.admin_revoke("subject", Some(&orders.id), "test").await;
            }
        }
        let started = Instant::now();
        eventually(DEADLINE, how, || {
            let (iss, t) = (issuer.clone(), token.clone());
            async move {
                match tokio::task::spawn_blocking(move || validate(&iss, &t))
                    .await
                    .unwrap()
                {
                    Ok(false) => Ok(()),
                    Ok(true) => Err("still VALID".to_string()),
                    Err(e) => Err(e),
                }
            }
        })
        .await;
        eprintln!(
            "{how}: the validator said INVALID after {:?}",
            started.elapsed()
        );
    }
}
