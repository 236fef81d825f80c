//! Introspection (RFC 7662) in every form latch answers it: `/introspect` for one token and
//! `/introspect/batch` for many. Each handler authenticates, reads what the caller asked
//! for, calls `app::introspect` and renders; the decision is the same in every form.
//!
//! What a caller may ask for, in headers, so that the RFC 7662 form stays untouched and a
//! server that knows none of it still answers correctly:
//! - `Accept: application/token-introspection+jwt` (RFC 9701): the answer as a JWT signed
//!   with latch's active key, for callers that must prove later what latch told them.
//!   Negotiated by q-value (RFC 9110 §12.5.1); JSON is the default, and latch never
//!   answers 406: an `Accept` it cannot meet gets JSON, as before.
//! - `Prefer: return=minimal` (RFC 7240 §4.2): only `{"active":true}` or
//!   `{"active":false}`, the cheapest check. `Preference-Applied: return=minimal` says it
//!   was honoured; a server that ignores the header answers in full, which still carries
//!   `active`, so a caller reading only `active` works against both.

use std::sync::OnceLock;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderValue, ACCEPT};
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use metrics::Counter;
use serde::{Deserialize, Serialize};

use super::admin::parse_json;
use super::error::{bytes_response, ApiError};
use super::json::JsonObject;
use super::request::{authenticate, authenticate_form, require_role, Form};
use crate::app::introspect::{self, Answer};
use crate::app::App;
use crate::clients::Role;
use crate::metrics as m;
use crate::tokens::introspection::MEDIA_TYPE as JWT;

type Resp = Response<Full<Bytes>>;

const JSON: &str = "application/json";
const INACTIVE: &[u8] = br#"{"active":false}"#;
const ACTIVE: &[u8] = br#"{"active":true}"#;
const PREFERENCE_APPLIED: &str = "preference-applied";
static PREFER: hyper::header::HeaderName = hyper::header::HeaderName::from_static("prefer");

// === /introspect ===

/// `POST /introspect`: one token, as JSON or as an RFC 9701 JWT, in full or minimal.
pub async fn introspect(app: &App, parts: &Parts, form: &Form) -> Result<Resp, ApiError> {
    let caller = authenticate_form(app, parts, form).await?;
    require_role(&caller, Role::Introspect)?;
    let token = form.required("token")?;
    let detail = Detail::of(&parts.headers);
    let format = Format::of(&parts.headers);
    let resp = match format {
        Format::Json => {
            let answer = introspect::introspect(app, &caller, token).await?;
            let resp = bytes_response(
                StatusCode::OK,
                render(app, &answer, detail)?,
                JSON,
                "no-store",
            );
            with_deprecation(resp, &answer)
        }
        Format::Jwt => {
            let decided = introspect::introspect_signed(app, &caller, token).await?;
            let json = render(app, &decided.answer, detail)?;
            let jwt = decided.sign(&json)?;
            let resp = bytes_response(StatusCode::OK, Bytes::from(jwt), JWT, "no-store");
            with_deprecation(resp, &decided.answer)
        }
    };
    count(format.label(), detail);
    Ok(with_preference(resp, detail))
}

// === /introspect/batch ===

/// The body of `POST /introspect/batch`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    tokens: Vec<String>,
}

/// `POST /introspect/batch`: `{"tokens": [...]}` → `{"results": [...]}`, one answer per
/// token, in order, each exactly what `/introspect` answers for it. HTTP Basic only (the
/// body is JSON), role `introspect`; JSON only (`Accept` is not consulted); `Prefer:
/// return=minimal` applies to every answer.
pub async fn batch(app: &App, parts: &Parts, body: &[u8]) -> Result<Resp, ApiError> {
    let caller = authenticate(app, parts, None)?;
    require_role(&caller, Role::Introspect)?;
    let request: BatchRequest = parse_json(parts, body)?;
    let detail = Detail::of(&parts.headers);
    let answers = introspect::introspect_batch(app, &caller, &request.tokens).await?;
    let per_answer = match detail {
        Detail::Minimal => ACTIVE.len() + 1,
        Detail::Full => 320,
    };
    let mut out = Vec::with_capacity(16 + answers.len() * per_answer);
    out.extend_from_slice(b"{\"results\":[");
    for (i, answer) in answers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&render(app, answer, detail)?);
    }
    out.extend_from_slice(b"]}");
    count("batch", detail);
    let resp = bytes_response(StatusCode::OK, Bytes::from(out), JSON, "no-store");
    Ok(with_preference(resp, detail))
}

// === rendering ===

#[derive(Serialize)]
struct RefreshIntrospection<'a> {
    active: bool,
    token_type: &'static str,
    client_id: &'a str,
    sub: &'a str,
    sid: &'a str,
    scope: &'a str,
    aud: &'a str,
    iss: &'a str,
    exp: i64,
    iat: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<&'a str>,
}

/// The RFC 7662 JSON object of one answer: what `/introspect` sends, what a batch lists
/// and what an RFC 9701 JWT embeds.
fn render(app: &App, answer: &Answer, detail: Detail) -> Result<Bytes, ApiError> {
    let full = match (answer, detail) {
        (Answer::Inactive, _) => return Ok(Bytes::from_static(INACTIVE)),
        (_, Detail::Minimal) => return Ok(Bytes::from_static(ACTIVE)),
        (Answer::Access { claims: c, .. }, Detail::Full) => return Ok(render_access(c)),
        (Answer::Refresh(r), Detail::Full) => serde_json::to_vec(&RefreshIntrospection {
            active: true,
            token_type: "refresh_token",
            client_id: &r.client_id,
            sub: &r.sub,
            sid: &r.sid,
            scope: &r.scope,
            aud: &r.aud,
            iss: &app.config.issuer,
            exp: r.expires_at_ms.div_euclid(1000),
            iat: r.issued_at_ms.div_euclid(1000),
            username: r.username.as_deref(),
        }),
    };
    full.map(Bytes::from)
        .map_err(|e| ApiError::Internal(format!("rendering an introspection answer: {e}")))
}

/// An active access token's RFC 7662 answer, written directly: the member names are
/// ours (written as they are), each string value is copied as is when it needs no escape
/// (latch's own values, such as ids, URLs and scopes, never do) and escaped by serde_json
/// otherwise. `tests` below hold it equal to serde_json's rendering of the same answer.
fn render_access(c: &crate::tokens::AccessClaims) -> Bytes {
    let mut w = JsonObject::with_capacity(
        160 + c.scope.len()
            + c.client_id.len()
            + c.sub.len()
            + c.aud.len()
            + c.iss.len()
            + c.jti.len(),
    );
    w.raw("active", "true");
    w.str("scope", &c.scope);
    w.str("client_id", &c.client_id);
    w.str("sub", &c.sub);
    w.str("aud", &c.aud);
    w.str("iss", &c.iss);
    w.int("exp", c.exp);
    w.int("iat", c.iat);
    w.int("nbf", c.nbf);
    w.str("jti", &c.jti);
    w.str("token_type", crate::tokens::Cnf::token_type(c.cnf.as_ref()));
    if let Some(sid) = &c.sid {
        w.str("sid", sid);
    }
    if let Some(act) = &c.act {
        w.value("act", act);
    }
    if let Some(username) = &c.username {
        w.str("username", username);
    }
    // The elevation grant the token's extra scope comes from.
    if let Some(grant) = &c.grant {
        w.str("grant", grant);
    }
    // What the token is bound to, for the resource server to compare: the DPoP key
    // (`jkt`, RFC 9449 §6.2) or the client certificate (`x5t#S256`, RFC 8705 §3.2).
    if let Some(cnf) = &c.cnf {
        w.value("cnf", cnf);
    }
    w.finish()
}

/// The deprecation headers (`Deprecation`, `Sunset`, ...) of an active access token that
/// carries a deprecated scope or audience, as `/introspect` answers them in every form.
fn with_deprecation(resp: Resp, answer: &Answer) -> Resp {
    match answer {
        Answer::Access { deprecated, .. } => super::oauth::deprecation(resp, deprecated),
        _ => resp,
    }
}

/// `Preference-Applied: return=minimal` on a minimal answer (RFC 7240 §3).
fn with_preference(mut resp: Resp, detail: Detail) -> Resp {
    if detail == Detail::Minimal {
        resp.headers_mut().insert(
            PREFERENCE_APPLIED,
            HeaderValue::from_static("return=minimal"),
        );
    }
    resp
}

/// Counts one answer in `latch_introspection_answers_total`. The six series are
/// registered once (the recorder is installed before the listener opens), so the plain
/// path pays an atomic add, not a key build and registry lookup per request.
fn count(format: &'static str, detail: Detail) {
    const FORMATS: [&str; 3] = ["json", "jwt", "batch"];
    static SERIES: OnceLock<Vec<Counter>> = OnceLock::new();
    let series = SERIES.get_or_init(|| {
        FORMATS
            .iter()
            .flat_map(|f| [Detail::Full, Detail::Minimal].map(|d| (*f, d.label())))
            .map(|(f, d)| metrics::counter!(m::INTROSPECTION_ANSWERS_TOTAL, "format" => f, "detail" => d))
            .collect()
    });
    let f = FORMATS.iter().position(|f| *f == format).unwrap_or(0);
    series[f * 2 + usize::from(detail == Detail::Minimal)].increment(1);
}

// === negotiation ===

/// How the answer is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// RFC 7662 JSON: the default.
    Json,
    /// RFC 9701: a JWT signed with the active key.
    Jwt,
}

impl Format {
    /// Proactive negotiation (RFC 9110 §12.5.1) between JSON and the RFC 9701 JWT. Each
    /// type takes the weight of the most specific range that matches it (`type/subtype`
    /// over `type/*` over `*/*`). The JWT is chosen when it weighs more than JSON, when
    /// JSON is not acceptable but it is, or on a tie when it is named explicitly (a caller
    /// names it only if it can verify it). Anything else, no `Accept` or one latch cannot
    /// meet included, is JSON: never a 406.
    fn of(headers: &HeaderMap) -> Format {
        let mut values = headers.get_all(ACCEPT).iter().peekable();
        if values.peek().is_none() {
            return Format::Json;
        }
        let (mut jwt, mut json) = (Weight::NONE, Weight::NONE);
        let ranges = values
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(media_range);
        for (range, q) in ranges {
            jwt.consider(range, q, JWT);
            json.consider(range, q, JSON);
        }
        let acceptable = |w: Weight| w.specificity > 0 && w.q > 0;
        let tie_named = jwt.q == json.q && jwt.specificity == EXACT;
        if !acceptable(jwt) {
            Format::Json
        } else if !acceptable(json) || jwt.q > json.q || tie_named {
            Format::Jwt
        } else {
            Format::Json
        }
    }

    fn label(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Jwt => "jwt",
        }
    }
}

/// `type/subtype`, the most specific media range.
const EXACT: u8 = 3;

/// The weight a media type gets from the most specific range that matched it so far.
#[derive(Debug, Clone, Copy)]
struct Weight {
    /// 0: nothing matched; 1 `*/*`; 2 `type/*`; 3 the type itself.
    specificity: u8,
    /// In thousandths (RFC 9110 qvalues have three decimals at most).
    q: u16,
}

impl Weight {
    const NONE: Weight = Weight {
        specificity: 0,
        q: 0,
    };

    fn consider(&mut self, range: &str, q: u16, media: &str) {
        let specificity = if range.eq_ignore_ascii_case(media) {
            EXACT
        } else if range == "*/*" {
            1
        } else {
            match (range.strip_suffix("/*"), media.split_once('/')) {
                (Some(t), Some((mt, _))) if t.eq_ignore_ascii_case(mt) => 2,
                _ => 0,
            }
        };
        if specificity > self.specificity || (specificity == self.specificity && q > self.q) {
            *self = Weight { specificity, q };
        }
    }
}

/// One element of `Accept`: the media range and its weight, `q=1` when absent. An element
/// with an invalid weight or no `/` is skipped, as if it were not there.
fn media_range(element: &str) -> Option<(&str, u16)> {
    let mut parts = element.split(';');
    let range = parts.next()?.trim();
    if !range.contains('/') {
        return None;
    }
    for param in parts {
        if let Some((name, value)) = param.split_once('=') {
            if name.trim().eq_ignore_ascii_case("q") {
                return Some((range, qvalue(value.trim())?));
            }
        }
    }
    Some((range, 1000))
}

/// RFC 9110 §12.4.2: `0[.ddd]` or `1[.000]`, in thousandths.
fn qvalue(s: &str) -> Option<u16> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// How much of the answer the caller wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detail {
    /// Every member RFC 7662 and latch define: the default.
    Full,
    /// `active` alone (`Prefer: return=minimal`).
    Minimal,
}

impl Detail {
    /// The first `return` preference of the `Prefer` headers (RFC 7240 §2: names are
    /// case-insensitive, values may be quoted). Any other value, or none, is `Full`.
    fn of(headers: &HeaderMap) -> Detail {
        let preferences = headers
            .get_all(&PREFER)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','));
        for preference in preferences {
            let token = preference.split(';').next().unwrap_or("").trim();
            let (name, value) = token.split_once('=').unwrap_or((token, ""));
            if name.trim().eq_ignore_ascii_case("return") {
                let value = value.trim().trim_matches('"');
                return if value.eq_ignore_ascii_case("minimal") {
                    Detail::Minimal
                } else {
                    Detail::Full
                };
            }
        }
        Detail::Full
    }

    fn label(self) -> &'static str {
        match self {
            Detail::Full => "full",
            Detail::Minimal => "minimal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::{AccessClaims, Cnf};
    use serde_json::{json, Value};

    fn claims() -> AccessClaims {
        AccessClaims {
            nbf: -5,
            scope: "read write".into(),
            sid: None,
            rse: 7,
            ..crate::tokens::tests::claims()
        }
    }

    /// The direct writer gives valid JSON with exactly the members and values serde_json
    /// gives, for plain values and for every kind that needs escaping.
    #[test]
    fn the_access_answer_is_the_json_serde_would_write() {
        let plain = claims();
        let got: Value = serde_json::from_slice(&render_access(&plain)).unwrap();
        assert_eq!(
            got,
            json!({"active": true, "scope": "read write", "client_id": "app", "sub": "alice",
                "aud": "https://api", "iss": "https://latch.test", "exp": 1_800_000_300i64,
                "iat": 1_800_000_000i64, "nbf": -5, "jti": "jti-1", "token_type": "Bearer"})
        );
        let mut hostile = claims();
        hostile.sub = "quote\" back\\slash \u{1} ctl \n nl é ünï \u{2028}".into();
        hostile.username = Some("</script>\"x\":1".into());
        hostile.sid = Some("s\t1".into());
        hostile.grant = Some("g-1".into());
        hostile.act = Some(json!({"sub": "a\"b", "act": {"sub": "c"}}));
        hostile.cnf = Some(Cnf::Jkt {
            jkt: "thumb".into(),
        });
        let text = render_access(&hostile);
        let got: Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(got["sub"], hostile.sub.as_str());
        assert_eq!(got["username"], "</script>\"x\":1");
        assert_eq!(got["sid"], "s\t1");
        assert_eq!(got["grant"], "g-1");
        assert_eq!(got["act"], json!({"sub": "a\"b", "act": {"sub": "c"}}));
        assert_eq!(got["cnf"], json!({"jkt": "thumb"}));
        assert_eq!(got["token_type"], "DPoP");
        // A certificate-bound token stays a bearer token (RFC 8705 §3).
        let mut bound = claims();
        bound.cnf = Some(Cnf::X5t {
            x5t_s256: "print".into(),
        });
        let bound: Value = serde_json::from_slice(&render_access(&bound)).unwrap();
        assert_eq!(bound["cnf"], json!({"x5t#S256": "print"}));
        assert_eq!(bound["token_type"], "Bearer");
        assert_eq!(got.as_object().unwrap().len(), 16);
        // Control characters never reach the output unescaped.
        assert!(!text.iter().any(|&b| b < 0x20), "{text:?}");
    }

    fn headers(name: &'static str, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn accept_negotiation() {
        use Format::{Json, Jwt};
        let cases: &[(&[&str], Format)] = &[
            (&[], Json),
            (&["application/json"], Json),
            (&["application/token-introspection+jwt"], Jwt),
            (&["APPLICATION/Token-Introspection+JWT"], Jwt),
            (&["application/token-introspection+jwt; charset=utf-8"], Jwt),
            (
                &["application/token-introspection+jwt;q=0.5, application/json"],
                Json,
            ),
            (
                &["application/json;q=0.5, application/token-introspection+jwt"],
                Jwt,
            ),
            (
                &["application/json;q=0.5,application/token-introspection+jwt;q=0.501"],
                Jwt,
            ),
            // A tie: named explicitly, the JWT wins, whatever the order.
            (
                &["application/token-introspection+jwt, application/json"],
                Jwt,
            ),
            (
                &["application/json, application/token-introspection+jwt"],
                Jwt,
            ),
            // Wildcards alone: JSON, the default.
            (&["*/*"], Json),
            (&["application/*"], Json),
            (
                &["*/*;q=0.1, application/token-introspection+jwt;q=0.2"],
                Jwt,
            ),
            (
                &["application/token-introspection+jwt;q=0.2, */*;q=0.3"],
                Json,
            ),
            // The specific range decides even when a wildcard weighs more.
            (&["application/token-introspection+jwt;q=0, */*"], Json),
            (&["application/json;q=0, */*"], Jwt),
            (&["application/token-introspection+jwt;q=0"], Json),
            (&["application/token-introspection+jwt;q=0.001"], Jwt),
            (&["application/json;q=0"], Json),
            // Nothing latch can meet: JSON anyway (no 406).
            (&["text/html"], Json),
            (&["text/*"], Json),
            // Invalid weights: the element is ignored.
            (&["application/token-introspection+jwt;q=abc"], Json),
            (&["application/token-introspection+jwt;q=1.5"], Json),
            (&["application/token-introspection+jwt;q=0.1234"], Json),
            (&["application/token-introspection+jwt;q=1.000"], Jwt),
            (&["application/token-introspection+jwt;q=1."], Jwt),
            (&["token-introspection+jwt"], Json),
            (&[""], Json),
            (&[" , ,"], Json),
            // Several header lines are one list.
            (
                &[
                    "application/json;q=0.1",
                    "application/token-introspection+jwt",
                ],
                Jwt,
            ),
            (
                &[
                    "application/token-introspection+jwt;q=0.1",
                    "application/json",
                ],
                Json,
            ),
        ];
        for (values, expected) in cases {
            let got = Format::of(&headers("accept", values));
            assert_eq!(got, *expected, "Accept: {values:?}");
        }
    }

    #[test]
    fn qvalues() {
        let cases = [
            ("0", Some(0)),
            ("0.5", Some(500)),
            ("0.05", Some(50)),
            ("0.123", Some(123)),
            ("1", Some(1000)),
            ("1.0", Some(1000)),
            ("1.001", None),
            ("2", None),
            ("-0", None),
            ("0.", Some(0)),
            ("", None),
            (".5", None),
        ];
        for (s, expected) in cases {
            assert_eq!(qvalue(s), expected, "{s:?}");
        }
    }

    #[test]
    fn prefer_minimal() {
        use Detail::{Full, Minimal};
        let cases: &[(&[&str], Detail)] = &[
            (&[], Full),
            (&["return=minimal"], Minimal),
            (&["RETURN=Minimal"], Minimal),
            (&["return=\"minimal\""], Minimal),
            (&["return = minimal"], Minimal),
            (&["respond-async, return=minimal; x=1"], Minimal),
            (&["return=representation"], Full),
            (&["return=representation, return=minimal"], Full),
            (&["wait=5", "return=minimal"], Minimal),
            (&["return-minimal"], Full),
            (&["minimal"], Full),
            (&[""], Full),
        ];
        for (values, expected) in cases {
            assert_eq!(
                Detail::of(&headers("prefer", values)),
                *expected,
                "Prefer: {values:?}"
            );
        }
    }
}
