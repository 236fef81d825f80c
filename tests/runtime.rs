//! `[runtime]`: the `per_core` flavor (one single-threaded runtime per worker, each with
//! its own `SO_REUSEPORT` socket) serves exactly what the shared runtime serves: one
//! node, one table, one connection cap.

use std::collections::HashSet;

use testkit::clients;
use testkit::prelude::*;

const WORKERS: usize = 3;

fn per_core() -> ServerBuilder {
    TestServer::builder()
        .env("LATCH_RUNTIME__FLAVOR", "per_core")
        .env("LATCH_RUNTIME__WORKERS", &WORKERS.to_string())
}

/// The names of the server's threads (Linux: `/proc/PID/task/*/comm`).
fn thread_names(pid: u32) -> Vec<String> {
    let mut names = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let comm = task.unwrap().path().join("comm");
        if let Ok(name) = std::fs::read_to_string(comm) {
            names.push(name.trim().to_string());
        }
    }
    names
}

/// Listening sockets on `port` (`/proc/net/tcp`, state 0A = LISTEN).
fn listening_sockets(port: u16) -> usize {
    let port_hex = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| t.lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&port_hex) && f[3] == "0A"
        })
        .count()
}

#[tokio::test]
async fn per_core_workers_share_one_node() {
    let s = per_core().start().await;
    // One thread and one listening socket per worker. The sockets are bound before the
    // node says it listens; the threads start right after (a new thread carries the
    // process's name until it names itself), so they are waited for.
    let pid = s.pid();
    eventually(
        DEADLINE,
        "one latch-core thread per worker",
        || async move {
            let names = thread_names(pid);
            let cores: HashSet<&String> = names
                .iter()
                .filter(|n| n.starts_with("latch-core-"))
                .collect();
            match cores.len() {
                WORKERS => Ok(()),
                _ => Err(format!("threads: {names:?}")),
            }
        },
    )
    .await;
    assert_eq!(listening_sockets(s.addr.port()), WORKERS);

    // Many connections (the kernel spreads them over the workers): tokens issued on any
    // worker are active on every other, and a revocation taken by one is seen by all.
    let conns: Vec<Http> = (0..24).map(|_| Http::new(s.addr)).collect();
    let mut tokens = Vec::new();
    for c in &conns {
        let r = c
            .post_form(
                "/token",
                &[("grant_type", "client_credentials")],
                clients::orders().auth(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        tokens.push(r.json()["access_token"].as_str().unwrap().to_string());
    }
    let rs = clients::rs_all();
    for (i, c) in conns.iter().enumerate() {
        let t = &tokens[(i + 7) % tokens.len()];
        let r = c.post_form("/introspect", &[("token", t)], rs.auth()).await;
        assert_eq!(r.json()["active"], true, "{}", r.text());
    }
    let victim = tokens[3].clone();
    let r = conns[0]
        .post_form("/revoke", &[("token", &victim)], clients::orders().auth())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for c in &conns {
        let r = c
            .post_form("/introspect", &[("token", &victim)], rs.auth())
            .await;
        assert_eq!(r.json()["active"], false, "{}", r.text());
    }
    // Requests were counted in the one registry whichever worker served them.
    let metrics = Http::new(s.metrics_addr).get("/metrics", None).await.text();
    let introspections: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("latch_requests_total{") && l.contains("introspect\""))
        .filter(|l| l.contains("status=\"200\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        introspections >= 48.0,
        "{introspections} introspections counted"
    );
}

/// The cap is the node's, not each worker's: with three workers and a cap of two, the
/// third kept-alive connection is refused whichever worker the kernel hands it to.
#[tokio::test]
async fn per_core_workers_share_the_connection_cap() {
    let s = per_core()
        .config(|c| {
            c.limits.max_connections = 2;
            c.limits.max_connections_per_ip = Some(2);
        })
        .start()
        .await;
    // Several tries over the cap, so that some land on each of the three sockets.
    assert_cap_of_two(s.addr, 9).await;
}

#[tokio::test]
async fn per_core_drains_and_exits_on_sigterm() {
    let mut s = per_core().start().await;
    let t = s.issue(&clients::orders(), &[]).await;
    assert!(s.is_active(&t).await);
    s.signal("TERM");
    let status = s.wait_exit(DEADLINE).await;
    assert!(status.success(), "exit status {status:?}: {}", s.logs());
}

#[tokio::test]
async fn runtime_settings_are_checked() {
    let cfg = TestServer::builder().env("LATCH_RUNTIME__FLAVOR", "one_per_request");
    let (status, _, stderr) = cfg.run_verb("check").await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("runtime.flavor"), "{stderr}");
    let cfg = TestServer::builder().env("LATCH_RUNTIME__WORKERS", "100000");
    let (status, _, stderr) = cfg.run_verb("check").await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("runtime.workers"), "{stderr}");
}
