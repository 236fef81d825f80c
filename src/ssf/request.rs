//! What a receiver sends, checked: stream creation (POST), update (PATCH), replacement
//! (PUT), status, verification and poll bodies (SSF 1.0 §8, RFC 8936 §2.4). Every
//! refusal is a sentence naming the member at fault; the caller answers it with 400.

use serde_json::{Map, Value};

use super::{Delivery, Status, Stream, EVENTS_SUPPORTED, POLL, PUSH};

/// Longest `description` kept (SSF 1.0 §8.1.1: the transmitter MAY truncate).
pub const MAX_DESCRIPTION: usize = 256;
/// Most `events_requested` entries, and the longest one.
const MAX_EVENT_TYPES: usize = 32;
const MAX_EVENT_TYPE_LEN: usize = 512;
const MAX_URL: usize = 2048;
const MAX_AUTHORIZATION: usize = 4096;
const MAX_STATE: usize = 1024;
const MAX_REASON: usize = 256;
/// Most jtis one poll may acknowledge or report (RFC 8936 §2.4).
pub const MAX_ACKS: usize = 1000;
/// Most SETs one poll returns, whatever `maxEvents` asks.
pub const MAX_EVENTS: usize = 1000;

/// Members the transmitter supplies (SSF 1.0 §8.1.1).
const TRANSMITTER_SUPPLIED: [&str; 7] = [
    "stream_id",
    "iss",
    "aud",
    "events_supported",
    "events_delivered",
    "min_verification_interval",
    "inactivity_timeout",
];

/// The receiver-supplied members of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    pub events_requested: Option<Vec<String>>,
    pub delivery: Delivery,
    pub description: Option<String>,
}

/// What the transmitter says of a stream, for checking transmitter-supplied members a
/// PATCH or PUT repeats ("MAY be present, but they MUST match").
pub struct Expected<'a> {
    pub issuer: &'a str,
    pub stream: &'a Stream,
    pub min_verification_interval: Option<u64>,
    /// This stream's poll `endpoint_url`.
    pub poll_url: &'a str,
}

fn object(body: &Value) -> Result<&Map<String, Value>, String> {
    body.as_object()
        .ok_or_else(|| "the JSON body must be an object".to_string())
}

/// A stream id as latch makes them: 1-64 unreserved URI characters (RFC 3986 §2.3).
pub fn valid_stream_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// The `stream_id` member, required and well formed.
pub fn stream_id(body: &Value) -> Result<&str, String> {
    match object(body)?.get("stream_id") {
        Some(Value::String(id)) if valid_stream_id(id) => Ok(id),
        Some(_) => Err("stream_id must be a stream id string".into()),
        None => Err("stream_id is required".into()),
    }
}

/// A create request (POST to the configuration endpoint). Without `delivery`, poll.
pub fn create(body: &Value) -> Result<Fields, String> {
    let map = object(body)?;
    for key in map.keys() {
        if TRANSMITTER_SUPPLIED.contains(&key.as_str()) {
            return Err(format!("{key} is supplied by the transmitter"));
        }
        only(key, &["events_requested", "delivery", "description"])?;
    }
    Ok(Fields {
        events_requested: events_requested(map.get("events_requested"))?,
        delivery: match map.get("delivery") {
            Some(d) => delivery(d, None)?,
            None => Delivery::Poll,
        },
        description: description(map.get("description"))?,
    })
}

/// A PATCH (`replace` false: members left out stay) or PUT (`replace` true: members left
/// out are deleted) of `expected.stream`.
pub fn update(body: &Value, expected: &Expected<'_>, replace: bool) -> Result<Fields, String> {
    let map = object(body)?;
    let current = expected.stream;
    for (key, value) in map {
        if TRANSMITTER_SUPPLIED.contains(&key.as_str()) {
            check_transmitted(key, value, expected)?;
            continue;
        }
        only(key, &["events_requested", "delivery", "description"])?;
    }
    let keep = |k: &str| !replace && !map.contains_key(k);
    Ok(Fields {
        events_requested: if keep("events_requested") {
            current.events_requested.clone()
        } else {
            events_requested(map.get("events_requested"))?
        },
        delivery: match map.get("delivery") {
            Some(d) => delivery(d, Some(expected.poll_url))?,
            None if replace => Delivery::Poll,
            None => current.delivery.clone(),
        },
        description: if keep("description") {
            current.description.clone()
        } else {
            description(map.get("description"))?
        },
    })
}

fn only(key: &str, allowed: &[&str]) -> Result<(), String> {
    if allowed.contains(&key) {
        Ok(())
    } else {
        Err(format!("unknown member {}", printable(key)))
    }
}

/// A member name fit for an error message.
fn printable(s: &str) -> String {
    let clean: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(40)
        .collect();
    format!("{clean:?}")
}

fn check_transmitted(key: &str, value: &Value, x: &Expected<'_>) -> Result<(), String> {
    let s = x.stream;
    let strings = |v: &Value| -> Option<Vec<String>> {
        let mut out: Vec<String> = v
            .as_array()?
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect::<Option<_>>()?;
        out.sort();
        Some(out)
    };
    let sorted = |v: &[&str]| {
        let mut out: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        out.sort();
        out
    };
    let matches = match key {
        "stream_id" => value.as_str() == Some(s.id.as_str()),
        "iss" => value.as_str() == Some(x.issuer),
        "aud" => {
            value.as_str() == Some(s.aud.as_str()) || strings(value) == Some(vec![s.aud.clone()])
        }
        "events_supported" => strings(value) == Some(sorted(&EVENTS_SUPPORTED)),
        "events_delivered" => strings(value) == Some(sorted(&s.events_delivered())),
        "min_verification_interval" => {
            x.min_verification_interval.is_some() && value.as_u64() == x.min_verification_interval
        }
        _ => false, // inactivity_timeout: latch sets none.
    };
    if matches {
        Ok(())
    } else {
        Err(format!("{key} does not match the transmitter's value"))
    }
}

fn events_requested(v: Option<&Value>) -> Result<Option<Vec<String>>, String> {
    let Some(v) = v else { return Ok(None) };
    let bad = || {
        format!("events_requested must be an array of at most {MAX_EVENT_TYPES} event type URIs")
    };
    let items = v.as_array().ok_or_else(bad)?;
    if items.len() > MAX_EVENT_TYPES {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item.as_str() {
            Some(s) if !s.is_empty() && s.len() <= MAX_EVENT_TYPE_LEN => {
                if !out.iter().any(|o| o == s) {
                    out.push(s.to_string());
                }
            }
            _ => return Err(bad()),
        }
    }
    Ok(Some(out))
}

fn description(v: Option<&Value>) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.chars().take(MAX_DESCRIPTION).collect())),
        Some(_) => Err("description must be a string".into()),
    }
}

/// A `delivery` object. `poll_url` is this stream's poll endpoint (none yet at creation,
/// when a receiver-supplied poll `endpoint_url` is refused).
fn delivery(v: &Value, poll_url: Option<&str>) -> Result<Delivery, String> {
    let map = v
        .as_object()
        .ok_or_else(|| "delivery must be an object".to_string())?;
    let method = match map.get("method") {
        Some(Value::String(m)) => m.as_str(),
        Some(_) => return Err("delivery.method must be a string".into()),
        None => return Err("delivery.method is required".into()),
    };
    match method {
        PUSH => {
            for key in map.keys() {
                only(key, &["method", "endpoint_url", "authorization_header"])
                    .map_err(|e| format!("delivery: {e}"))?;
            }
            let endpoint_url = match map.get("endpoint_url") {
                Some(Value::String(u)) if !u.is_empty() && u.len() <= MAX_URL => u.clone(),
                Some(_) => return Err("delivery.endpoint_url must be a URL".into()),
                None => return Err("delivery.endpoint_url is required for push".into()),
            };
            let authorization_header = match map.get("authorization_header") {
                None | Some(Value::Null) => None,
                Some(Value::String(h))
                    if !h.is_empty()
                        && h.len() <= MAX_AUTHORIZATION
                        && h.bytes().all(|b| (0x20..0x7f).contains(&b)) =>
                {
                    Some(h.clone())
                }
                Some(_) => {
                    return Err(format!(
                        "delivery.authorization_header must be 1-{MAX_AUTHORIZATION} printable ASCII characters"
                    ))
                }
            };
            Ok(Delivery::Push {
                endpoint_url,
                authorization_header,
            })
        }
        POLL => {
            for key in map.keys() {
                only(key, &["method", "endpoint_url"]).map_err(|e| format!("delivery: {e}"))?;
            }
            match (map.get("endpoint_url"), poll_url) {
                (None, _) => Ok(Delivery::Poll),
                (Some(Value::String(u)), Some(ours)) if u == ours => Ok(Delivery::Poll),
                _ => Err(
                    "delivery.endpoint_url of a poll stream is supplied by the transmitter".into(),
                ),
            }
        }
        other => Err(format!(
            "unsupported delivery.method {} ({PUSH} or {POLL})",
            printable(other)
        )),
    }
}

/// A status update (POST to the status endpoint).
pub fn status(body: &Value) -> Result<(Status, Option<String>), String> {
    let map = object(body)?;
    for key in map.keys() {
        only(key, &["stream_id", "status", "reason"])?;
    }
    let status = match map.get("status") {
        Some(Value::String(s)) => Status::parse(s)
            .ok_or_else(|| "status must be enabled, paused or disabled".to_string())?,
        Some(_) => return Err("status must be enabled, paused or disabled".into()),
        None => return Err("status is required".into()),
    };
    let reason = match map.get("reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) if r.len() <= MAX_REASON => Some(r.clone()),
        Some(_) => {
            return Err(format!(
                "reason must be a string of at most {MAX_REASON} bytes"
            ))
        }
    };
    Ok((status, reason))
}

/// A verification request: the optional `state` to echo.
pub fn verification(body: &Value) -> Result<Option<String>, String> {
    let map = object(body)?;
    for key in map.keys() {
        only(key, &["stream_id", "state"])?;
    }
    match map.get("state") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= MAX_STATE => Ok(Some(s.clone())),
        Some(_) => Err(format!(
            "state must be a string of at most {MAX_STATE} bytes"
        )),
    }
}

/// An RFC 8936 §2.4 poll request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poll {
    /// How many SETs to return at most (capped at [`MAX_EVENTS`]); 0: acknowledge only.
    pub max_events: usize,
    /// Answer at once even with nothing to return (else wait up to `ssf.poll_wait`).
    pub return_immediately: bool,
    /// jtis the receiver acknowledges.
    pub ack: Vec<String>,
    /// jtis the receiver could not process, with its `err` (they count as delivered).
    pub set_errs: Vec<(String, String)>,
}

/// Parses a poll body; an empty body is a poll with every default.
pub fn poll(body: &Value, default_max: usize) -> Result<Poll, String> {
    let map = object(body)?;
    for key in map.keys() {
        only(key, &["maxEvents", "returnImmediately", "ack", "setErrs"])?;
    }
    let max_events = match map.get("maxEvents") {
        None => default_max,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| "maxEvents must be a non-negative integer".to_string())?
            .min(MAX_EVENTS as u64) as usize,
    };
    let return_immediately = match map.get("returnImmediately") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("returnImmediately must be true or false".into()),
    };
    let ack = match map.get("ack") {
        None => Vec::new(),
        Some(Value::Array(items)) if items.len() <= MAX_ACKS => items
            .iter()
            .map(|j| j.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| "ack must be an array of jti strings".to_string())?,
        Some(_) => {
            return Err(format!(
                "ack must be an array of at most {MAX_ACKS} jti strings"
            ))
        }
    };
    let set_errs = match map.get("setErrs") {
        None => Vec::new(),
        Some(Value::Object(errs)) if errs.len() <= MAX_ACKS => errs
            .iter()
            .map(|(jti, e)| match e.get("err") {
                Some(Value::String(err)) if e.is_object() => Ok((jti.clone(), err.clone())),
                _ => Err("each setErrs value must be an object with an err string".to_string()),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(format!(
                "setErrs must be an object of at most {MAX_ACKS} jtis"
            ))
        }
    };
    Ok(Poll {
        max_events,
        return_immediately,
        ack,
        set_errs,
    })
}
