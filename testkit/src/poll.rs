//! Waiting for something that should happen soon: poll to a generous deadline, never
//! sleep a guessed time, never assert on how long it took.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `f` every 50 ms until it returns `Ok`, or returns the last `Err` once
/// `deadline` has passed.
pub async fn try_eventually<T, F, Fut>(deadline: Duration, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                if start.elapsed() > deadline {
                    return Err(e);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Like [`try_eventually`] but panics with `what` and the last error.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    match try_eventually(deadline, f).await {
        Ok(v) => v,
        Err(e) => panic!("not reached within {deadline:?}: {what}; last: {e}"),
    }
}
