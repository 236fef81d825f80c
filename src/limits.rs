//! Rate limits: a pure GCRA core (time is passed in), the per-node keyed limiter built on
//! it, and the client address a limit is keyed by (peer, or the right-most untrusted
//! `X-Forwarded-For` hop behind a trusted proxy).
//!
//! Limits hold **per node**: checking them costs no store round trip on the hot path, and
//! a node that loses its store keeps limiting. Across a cluster of N nodes behind a load
//! balancer a client gets at most N × the configured rate.

use std::hash::Hash;
use std::net::IpAddr;

use dashmap::DashMap;

/// A configured rate: `count` events per `per_ms`, with bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Milliseconds between events at the sustained rate (the GCRA emission interval).
    pub interval_ms: i64,
    /// Events allowed back to back from rest.
    pub burst: u32,
}

impl Rate {
    /// Parses `"N/s"`, `"N/m"`, `"N/h"`; `"off"` is `None` (no limit).
    pub fn parse(text: &str, burst: u32) -> Result<Option<Rate>, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let bad = || format!("{text:?}: expected like \"20/s\", \"600/m\", \"1000/h\" or \"off\"");
        let (n, unit) = text.split_once('/').ok_or_else(bad)?;
        let n: u64 = n.trim().parse().map_err(|_| bad())?;
        let per_ms: u64 = match unit.trim() {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        if n == 0 || n > per_ms * 1000 {
            return Err(format!("{text:?}: the count must be 1 to 1000 per ms"));
        }
        if burst == 0 {
            return Err("the burst must be at least 1".into());
        }
        Ok(Some(Rate {
            interval_ms: (per_ms / n).max(1) as i64,
            burst,
        }))
    }

    /// Seconds until one more event conforms after a refusal with `wait_ms`.
    pub fn retry_after_secs(wait_ms: i64) -> u64 {
        (wait_ms.max(0) as u64).div_ceil(1000).max(1)
    }
}

/// One GCRA step. `tat` is the theoretical arrival time stored for the key (0: never
/// seen). Conforming: the new `tat` to store. Refused: how many ms until the next event
/// conforms (nothing is to be stored).
pub fn gcra(tat: i64, now_ms: i64, rate: Rate) -> Result<i64, i64> {
    let tat = tat.max(now_ms);
    let tolerance = rate.interval_ms * (i64::from(rate.burst) - 1);
    let allow_at = tat - tolerance;
    if now_ms < allow_at {
        return Err(allow_at - now_ms);
    }
    Ok(tat + rate.interval_ms)
}

/// Keys tracked before idle ones are swept: an attacker rotating addresses costs memory
/// only up to here.
const SWEEP_AT: usize = 100_000;

/// Theoretical arrival times by key, for one kind of limit. Lock-free per key.
pub struct Limiter<K: Eq + Hash> {
    tats: DashMap<K, i64, foldhash::fast::RandomState>,
}

impl<K: Eq + Hash + Clone> Default for Limiter<K> {
    fn default() -> Self {
        Limiter {
            tats: DashMap::default(),
        }
    }
}

impl<K: Eq + Hash + Clone> Limiter<K> {
    /// Counts one event for `key` at `now_ms`: `Ok` if it conforms to `rate`, else the
    /// ms until it would.
    pub fn check(&self, key: &K, now_ms: i64, rate: Rate) -> Result<(), i64> {
        if self.tats.len() >= SWEEP_AT {
            // A key at rest (tat in the past) behaves exactly like an absent one.
            self.tats.retain(|_, tat| *tat > now_ms);
        }
        let mut entry = self.tats.entry(key.clone()).or_insert(0);
        let next = gcra(*entry, now_ms, rate)?;
        *entry = next;
        Ok(())
    }

    /// Whether an event for `key` would conform now, without counting one.
    pub fn would_pass<Q>(&self, key: &Q, now_ms: i64, rate: Rate) -> Result<(), i64>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let tat = self.tats.get(key).map(|t| *t).unwrap_or(0);
        gcra(tat, now_ms, rate).map(|_| ())
    }

    pub fn len(&self) -> usize {
        self.tats.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tats.is_empty()
    }
}

/// An IPv4 or IPv6 network, `addr/prefix` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: prefix must be 0 to {max}"))?,
            None => max,
        };
        Ok(Cidr { net, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The address a request is attributed to. From a trusted proxy, the right-most
/// `X-Forwarded-For` hop that is not itself a trusted proxy (hops to its left could be
/// written by the client); a malformed hop counts as the proxy itself. From anyone else,
/// the peer: their `X-Forwarded-For` is ignored.
pub fn client_address<'a>(
    peer: IpAddr,
    forwarded_for: impl Iterator<Item = &'a str>,
    trusted: &[Cidr],
) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let hops: Vec<&str> = forwarded_for
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(ip.to_canonical()) => continue,
            Ok(ip) => return ip.to_canonical(),
            Err(_) => return peer,
        }
    }
    peer
}

/// The key an address is limited under. An IPv6 host usually holds a whole /64 and can
/// pick any address in it, so per-address limits count the /64; IPv4 counts the address.
/// Found by tests/redteam.rs (a guesser rotating through one /64 was never limited).
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let masked = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(std::net::Ipv6Addr::from(masked))
        }
        v4 => v4,
    }
}

/// Which limit refused a request; the `limit` label of `latch_rate_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Token,
    Revoke,
    AuthFailureClient,
    AuthFailureAddress,
    /// A Shared Signals verification requested within `ssf.min_verification_interval`.
    SsfVerification,
    /// An address that asked for too many status lists that do not exist.
    StatusListMiss,
}

impl Limit {
    pub fn label(self) -> &'static str {
        match self {
            Limit::Token => "token",
            Limit::Revoke => "revoke",
            Limit::AuthFailureClient => "auth_failure_client",
            Limit::AuthFailureAddress => "auth_failure_address",
            Limit::SsfVerification => "ssf_verification",
            Limit::StatusListMiss => "status_list_miss",
        }
    }
}

/// A refusal: which limit, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many requests ({}); retry after {retry_after_secs}s", limit.label())]
pub struct Limited {
    pub limit: Limit,
    pub retry_after_secs: u64,
}

/// Every rate limit of one node.
pub struct RateLimits {
    token: Limiter<Box<str>>,
    revoke: Limiter<Box<str>>,
    auth_client: Limiter<Box<str>>,
    auth_address: Limiter<IpAddr>,
    /// Requests for status lists that do not exist, per address (each costs store
    /// reads); a bucket of its own, at the per-address failure rate.
    status_miss: Limiter<IpAddr>,
    auth_client_rate: Option<Rate>,
    auth_address_rate: Option<Rate>,
    /// `limits.trusted_proxies`.
    pub proxies: Vec<Cidr>,
}

impl RateLimits {
    /// Limits with empty buckets: failed authentications are limited per client id at
    /// `auth_client_rate` and per address at `auth_address_rate` (`None`: unlimited);
    /// `proxies` are trusted to name the client address.
    pub fn new(
        auth_client_rate: Option<Rate>,
        auth_address_rate: Option<Rate>,
        proxies: Vec<Cidr>,
    ) -> RateLimits {
        RateLimits {
            token: Limiter::default(),
            revoke: Limiter::default(),
            auth_client: Limiter::default(),
            auth_address: Limiter::default(),
            status_miss: Limiter::default(),
            auth_client_rate,
            auth_address_rate,
            proxies,
        }
    }

    /// Counts one token request of `client`.
    pub fn token(&self, client: &str, rate: Option<Rate>, now_ms: i64) -> Result<(), Limited> {
        count(&self.token, client, rate, now_ms, Limit::Token)
    }

    /// Counts one revocation that `client` is about to record.
    pub fn revoke(&self, client: &str, rate: Option<Rate>, now_ms: i64) -> Result<(), Limited> {
        count(&self.revoke, client, rate, now_ms, Limit::Revoke)
    }

    /// Before verifying credentials: refused while the address, or the client id (when
    /// `check_client`), has used up its failures. Counts nothing.
    pub fn before_auth(
        &self,
        address: IpAddr,
        client: Option<&str>,
        now_ms: i64,
    ) -> Result<(), Limited> {
        if let Some(rate) = self.auth_address_rate {
            self.auth_address
                .would_pass(&limit_key(address), now_ms, rate)
                .map_err(|w| limited(Limit::AuthFailureAddress, w))?;
        }
        if let (Some(rate), Some(id)) = (self.auth_client_rate, client) {
            self.auth_client
                .would_pass(id, now_ms, rate)
                .map_err(|w| limited(Limit::AuthFailureClient, w))?;
        }
        Ok(())
    }

    /// After a failed authentication: one failure for the address and, if given (a
    /// configured client id), for the id.
    pub fn auth_failed(&self, address: IpAddr, client: Option<&str>, now_ms: i64) {
        if let Some(rate) = self.auth_address_rate {
            let _ = self.auth_address.check(&limit_key(address), now_ms, rate);
        }
        if let (Some(rate), Some(id)) = (self.auth_client_rate, client) {
            let _ = self.auth_client.check(&Box::from(id), now_ms, rate);
        }
    }
}

impl RateLimits {
    /// Before looking a status list up: refused while `address` has used up its misses
    /// (at `limits.auth_failure_ip_rate`, in a bucket of its own). Counts nothing.
    pub fn before_status_list(&self, address: IpAddr, now_ms: i64) -> Result<(), Limited> {
        match self.auth_address_rate {
            Some(rate) => self
                .status_miss
                .would_pass(&limit_key(address), now_ms, rate)
                .map_err(|w| limited(Limit::StatusListMiss, w)),
            None => Ok(()),
        }
    }

    /// After a status list was not found: one miss for `address`.
    pub fn status_list_missed(&self, address: IpAddr, now_ms: i64) {
        if let Some(rate) = self.auth_address_rate {
            let _ = self.status_miss.check(&limit_key(address), now_ms, rate);
        }
    }
}

fn count(
    limiter: &Limiter<Box<str>>,
    key: &str,
    rate: Option<Rate>,
    now_ms: i64,
    limit: Limit,
) -> Result<(), Limited> {
    let Some(rate) = rate else { return Ok(()) };
    limiter
        .check(&Box::from(key), now_ms, rate)
        .map_err(|w| limited(limit, w))
}

fn limited(limit: Limit, wait_ms: i64) -> Limited {
    Limited {
        limit,
        retry_after_secs: Rate::retry_after_secs(wait_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(text: &str, burst: u32) -> Rate {
        Rate::parse(text, burst).unwrap().unwrap()
    }

    #[test]
    fn parses_rates() {
        assert_eq!(rate("10/s", 5).interval_ms, 100);
        assert_eq!(rate("60/m", 1).interval_ms, 1000);
        assert_eq!(rate("2/h", 1).interval_ms, 1_800_000);
        assert_eq!(Rate::parse("off", 1), Ok(None));
        for bad in ["", "10", "10/d", "0/s", "x/s", "-1/s"] {
            assert!(Rate::parse(bad, 1).is_err(), "{bad:?}");
        }
        assert!(Rate::parse("1/s", 0).is_err());
    }

    #[test]
    fn gcra_allows_the_burst_then_the_rate() {
        let r = rate("10/s", 3);
        let l: Limiter<&str> = Limiter::default();
        let t0 = 1_000_000;
        for i in 0..3 {
            assert_eq!(l.check(&"a", t0, r), Ok(()), "burst event {i}");
        }
        // The fourth at the same instant waits one interval.
        assert_eq!(l.check(&"a", t0, r), Err(100));
        assert_eq!(l.check(&"a", t0 + 99, r), Err(1));
        assert_eq!(l.check(&"a", t0 + 100, r), Ok(()));
        assert!(l.check(&"a", t0 + 100, r).is_err());
        // Other keys are independent.
        assert_eq!(l.check(&"b", t0, r), Ok(()));
        // After rest, the full burst again.
        let later = t0 + 10_000;
        for _ in 0..3 {
            assert_eq!(l.check(&"a", later, r), Ok(()));
        }
        assert!(l.check(&"a", later, r).is_err());
    }

    #[test]
    fn refusals_are_not_counted_and_would_pass_counts_nothing() {
        let r = rate("1/s", 1);
        let l: Limiter<u8> = Limiter::default();
        assert_eq!(l.would_pass(&1, 0, r), Ok(()));
        assert_eq!(l.check(&1, 0, r), Ok(()));
        for _ in 0..100 {
            assert_eq!(l.check(&1, 500, r), Err(500));
        }
        assert_eq!(l.check(&1, 1000, r), Ok(()));
        assert_eq!(Rate::retry_after_secs(1), 1);
        assert_eq!(Rate::retry_after_secs(1001), 2);
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        let one = Cidr::parse("192.168.1.1").unwrap();
        assert!(one.contains("192.168.1.1".parse().unwrap()));
        assert!(!one.contains("192.168.1.2".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "::/129", "1.2.3.4/x"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn client_address_behind_proxies() {
        let proxies = [Cidr::parse("10.0.0.0/8").unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        type Case<'a> = (&'a str, &'a [&'a str], &'a str);
        let cases: &[Case] = &[
            // Not from a proxy: the header is the client's own words, ignored.
            ("203.0.113.9", &["198.51.100.1"], "203.0.113.9"),
            // From a proxy: the right-most hop it saw.
            ("10.0.0.2", &["198.51.100.1"], "198.51.100.1"),
            // A client-written hop on the left cannot choose its address.
            ("10.0.0.2", &["1.1.1.1, 198.51.100.1"], "198.51.100.1"),
            // Proxies chained: skip the trusted hops.
            ("10.0.0.2", &["198.51.100.1", "10.0.0.7"], "198.51.100.1"),
            // No header, or garbage: the proxy itself.
            ("10.0.0.2", &[], "10.0.0.2"),
            ("10.0.0.2", &["garbage"], "10.0.0.2"),
        ];
        for (peer, xff, want) in cases {
            let got = client_address(ip(peer), xff.iter().copied(), &proxies);
            assert_eq!(got, ip(want), "{peer} {xff:?}");
        }
    }
}
