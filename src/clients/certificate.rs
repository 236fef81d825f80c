//! Mutual-TLS client authentication (RFC 8705 §2) and certificate-bound tokens (§3): the
//! certificate a client presented in the TLS handshake ([`PeerCert`]), how a configured
//! client names the certificates it may authenticate with ([`CertAuth`]), and the pure
//! matching of the two. DER is read with `x509-cert` (RustCrypto); chains are validated
//! by rustls/webpki in `crate::tls`, never here.
//!
//! Decisions where RFC 8705 is silent (docs/API.md, "Mutual TLS"):
//! - `tls_client_auth_subject_dn` is compared RDN by RDN in RFC 4514 order (most specific
//!   first, as `openssl x509 -nameopt RFC2253` prints it): the same attribute types in the
//!   same order, values equal ignoring case and runs of spaces (caseIgnoreMatch).
//! - `tls_client_auth_san_dns` is an exact, case-insensitive name (no wildcards);
//!   `_san_uri` exact; `_san_ip` the same address; `_san_email` exact local part,
//!   case-insensitive domain.
//! - A self-signed client is matched by the SHA-256 of the whole leaf certificate (the
//!   `x5t#S256` of RFC 8705 §3.1), not by its public key: a re-issued certificate must be
//!   registered again.

use std::net::IpAddr;
use std::str::FromStr;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use subtle::ConstantTimeEq;
use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, TeletexStringRef, Utf8StringRef};
use x509_cert::der::{Decode, Tag, Tagged};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::name::RdnSequence;
use x509_cert::Certificate;

/// The method names (RFC 8705 §2.1.1 and §2.2.1), in contracts and metadata.
pub const TLS_CLIENT_AUTH: &str = "tls_client_auth";
pub const SELF_SIGNED_TLS_CLIENT_AUTH: &str = "self_signed_tls_client_auth";

/// Whether `method` is one of the two mutual-TLS methods.
pub fn is_mtls(method: &str) -> bool {
    method == TLS_CLIENT_AUTH || method == SELF_SIGNED_TLS_CLIENT_AUTH
}

/// The client certificate of a TLS connection, as the handshake gave it: set by the
/// accept loop on every request of the connection, never read from a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// The leaf certificate (DER).
    pub leaf: Vec<u8>,
    /// SHA-256 of `leaf`.
    pub sha256: [u8; 32],
    /// Whether the chain validated (signatures, validity, client-auth usage) against
    /// `tls.client_ca_file` when the connection was made.
    pub chain_trusted: bool,
}

impl PeerCert {
    pub fn new(leaf: Vec<u8>, chain_trusted: bool) -> PeerCert {
        PeerCert {
            sha256: sha256(&leaf),
            leaf,
            chain_trusted,
        }
    }

    /// `x5t#S256` (RFC 8705 §3.1): base64url of the leaf's SHA-256.
    pub fn x5t_s256(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.sha256)
    }
}

/// SHA-256 of `der`.
pub fn sha256(der: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, der).as_ref());
    out
}

/// What a `tls_client_auth` client's certificate must carry (RFC 8705 §2.1.2: one of
/// these per client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectMatch {
    Dn(RdnSequence),
    SanDns(String),
    SanUri(String),
    SanIp(IpAddr),
    SanEmail(String),
}

impl SubjectMatch {
    /// Parses one configured value (`field` is the RFC 8705 §2.1.2 metadata name).
    pub fn parse(field: &str, value: &str) -> Result<SubjectMatch, String> {
        if value.is_empty() {
            return Err("must not be empty".into());
        }
        match field {
            "tls_client_auth_subject_dn" => RdnSequence::from_str(value)
                .map(SubjectMatch::Dn)
                .map_err(|_| {
                    "not an RFC 4514 distinguished name (as `openssl x509 -noout -subject \
                     -nameopt RFC2253` prints it, e.g. CN=svc,O=Example)"
                        .into()
                }),
            "tls_client_auth_san_dns" => Ok(SubjectMatch::SanDns(value.to_ascii_lowercase())),
            "tls_client_auth_san_uri" => Ok(SubjectMatch::SanUri(value.to_string())),
            "tls_client_auth_san_ip" => value
                .parse()
                .map(SubjectMatch::SanIp)
                .map_err(|_| "not an IP address".into()),
            "tls_client_auth_san_email" => match value.rsplit_once('@') {
                Some((local, domain)) if !local.is_empty() && !domain.is_empty() => Ok(
                    SubjectMatch::SanEmail(format!("{local}@{}", domain.to_ascii_lowercase())),
                ),
                _ => Err("not an email address".into()),
            },
            _ => Err(format!("unknown field {field}")),
        }
    }

    /// Whether the certificate `der` carries this subject or name. A certificate that
    /// does not parse matches nothing.
    pub fn matches(&self, der: &[u8]) -> bool {
        let Ok(cert) = Certificate::from_der(der) else {
            return false;
        };
        let tbs = &cert.tbs_certificate;
        if let SubjectMatch::Dn(expected) = self {
            return dn_equal(expected, &tbs.subject);
        }
        // A certificate with two SAN extensions is malformed (RFC 5280 §4.2): no match.
        let Ok(Some((_, SubjectAltName(names)))) = tbs.get::<SubjectAltName>() else {
            return false;
        };
        names.iter().any(|name| match (self, name) {
            (SubjectMatch::SanDns(want), GeneralName::DnsName(n)) => {
                n.as_str().eq_ignore_ascii_case(want)
            }
            (SubjectMatch::SanUri(want), GeneralName::UniformResourceIdentifier(u)) => {
                u.as_str() == want
            }
            (SubjectMatch::SanIp(want), GeneralName::IpAddress(octets)) => {
                ip_of(octets.as_bytes()) == Some(*want)
            }
            (SubjectMatch::SanEmail(want), GeneralName::Rfc822Name(m)) => {
                match m.as_str().rsplit_once('@') {
                    Some((local, domain)) => {
                        format!("{local}@{}", domain.to_ascii_lowercase()) == *want
                    }
                    None => false,
                }
            }
            _ => false,
        })
    }
}

fn ip_of(octets: &[u8]) -> Option<IpAddr> {
    match octets.len() {
        4 => <[u8; 4]>::try_from(octets).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(octets)
            .ok()
            .map(|o| IpAddr::from(o).to_canonical()),
        _ => None,
    }
}

/// RDN by RDN (the sequence order is the certificate's), each RDN the same set of
/// attribute types with equal values.
fn dn_equal(expected: &RdnSequence, presented: &RdnSequence) -> bool {
    expected.0.len() == presented.0.len()
        && expected.0.iter().zip(presented.0.iter()).all(|(e, p)| {
            e.0.len() == p.0.len()
                && e.0.iter().all(|ea| {
                    p.0.iter()
                        .any(|pa| pa.oid == ea.oid && value_equal(&ea.value, &pa.value))
                })
        })
}

/// Directory strings compare ignoring case and runs of spaces; any other value by its DER.
fn value_equal(a: &x509_cert::der::Any, b: &x509_cert::der::Any) -> bool {
    match (text(a), text(b)) {
        (Some(x), Some(y)) => fold(&x) == fold(&y),
        (None, None) => a == b,
        _ => false,
    }
}

fn text(v: &x509_cert::der::Any) -> Option<String> {
    let s = match v.tag() {
        Tag::Utf8String => Utf8StringRef::try_from(v).ok()?.as_str().to_string(),
        Tag::PrintableString => PrintableStringRef::try_from(v).ok()?.as_str().to_string(),
        Tag::Ia5String => Ia5StringRef::try_from(v).ok()?.as_str().to_string(),
        Tag::TeletexString => TeletexStringRef::try_from(v).ok()?.as_str().to_string(),
        _ => return None,
    };
    Some(s)
}

fn fold(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// How a configured client may authenticate by certificate. Both may be set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertAuth {
    /// `tls_client_auth`: a chain valid under `tls.client_ca_file` whose leaf carries this.
    pub pki: Option<SubjectMatch>,
    /// `self_signed_tls_client_auth`: SHA-256 of each registered certificate.
    pub self_signed: Vec<[u8; 32]>,
}

impl CertAuth {
    /// The method `cert` authenticates this client with, if any: `tls_client_auth` when
    /// the chain is trusted and the subject matches, else `self_signed_tls_client_auth`
    /// when the leaf is registered (compared in constant time, all of them).
    pub fn authenticates(&self, cert: &PeerCert) -> Option<&'static str> {
        if cert.chain_trusted && self.pki.as_ref().is_some_and(|m| m.matches(&cert.leaf)) {
            return Some(TLS_CLIENT_AUTH);
        }
        let registered = self
            .self_signed
            .iter()
            .fold(subtle::Choice::from(0), |acc, t| {
                acc | t.ct_eq(&cert.sha256)
            });
        bool::from(registered).then_some(SELF_SIGNED_TLS_CLIENT_AUTH)
    }
}

/// The SHA-256 of each certificate in a PEM file's text.
pub fn thumbprints_of_pem(pem: &[u8]) -> Result<Vec<[u8; 32]>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    for c in &certs {
        Certificate::from_der(c).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    }
    Ok(certs.iter().map(|c| sha256(c)).collect())
}

/// The SHA-256 of the first `x5c` certificate (the key's own, RFC 7517 §4.7) of every key
/// of a JWKS that has one.
pub fn thumbprints_of_jwks(jwks: &str) -> Result<Vec<[u8; 32]>, String> {
    let v: serde_json::Value = serde_json::from_str(jwks).map_err(|e| format!("not JSON: {e}"))?;
    let keys = v
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("no \"keys\" array")?;
    let mut out = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let Some(first) = k
            .get("x5c")
            .and_then(|x| x.as_array())
            .and_then(|a| a.first())
        else {
            continue;
        };
        let der = first
            .as_str()
            .and_then(|s| STANDARD.decode(s).ok())
            .ok_or(format!("keys[{i}].x5c[0] is not base64 DER"))?;
        Certificate::from_der(&der)
            .map_err(|e| format!("keys[{i}].x5c[0] is not an X.509 certificate: {e}"))?;
        out.push(sha256(&der));
    }
    Ok(out)
}

/// A configured thumbprint: 64 hex digits or the base64url `x5t#S256` form.
pub fn parse_thumbprint(text: &str) -> Option<[u8; 32]> {
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?
    } else {
        URL_SAFE_NO_PAD.decode(text).ok()?
    };
    bytes.try_into().ok()
}

/// The leaf certificate (DER) of a forwarded client certificate: URL-escaped PEM as
/// nginx's `$ssl_client_escaped_cert` gives it (plain PEM is accepted too). Exactly one
/// certificate; `None` for anything else.
pub fn forwarded_leaf(value: &[u8]) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let pem: Vec<u8> = percent_encoding::percent_decode(value).collect();
    let mut certs = CertificateDer::pem_slice_iter(&pem);
    let first = certs.next()?.ok()?;
    // A chain is forwarded by some proxies: the leaf comes first. Anything unparsable
    // after it is refused all the same.
    if certs.any(|c| c.is_err()) {
        return None;
    }
    Certificate::from_der(&first).ok()?;
    Some(first.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(dn: &[(DnType, &str)], sans: Vec<SanType>) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        // rcgen starts with a CN of its own: the order must be the test's.
        p.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in dn {
            p.distinguished_name.push(t.clone(), *v);
        }
        p.subject_alt_names = sans;
        p.self_signed(&key).unwrap().der().to_vec()
    }

    fn m(field: &str, value: &str) -> SubjectMatch {
        SubjectMatch::parse(field, value).unwrap()
    }

    #[test]
    fn subject_dn_matches_in_rfc_4514_order_ignoring_case_and_spaces() {
        let der = cert(
            &[
                (DnType::CountryName, "DE"),
                (DnType::OrganizationName, "Example  Corp"),
                (DnType::CommonName, "svc"),
            ],
            vec![],
        );
        let dn = "tls_client_auth_subject_dn";
        assert!(m(dn, "CN=svc,O=Example Corp,C=DE").matches(&der));
        assert!(m(dn, "cn=SVC,o=example corp,c=de").matches(&der));
        // Another order, a missing or extra RDN, another value: no match.
        assert!(!m(dn, "C=DE,O=Example Corp,CN=svc").matches(&der));
        assert!(!m(dn, "CN=svc,O=Example Corp").matches(&der));
        assert!(!m(dn, "CN=svc,OU=x,O=Example Corp,C=DE").matches(&der));
        assert!(!m(dn, "CN=svc2,O=Example Corp,C=DE").matches(&der));
        assert!(SubjectMatch::parse(dn, "not a dn").is_err());
        assert!(SubjectMatch::parse(dn, "").is_err());
    }

    #[test]
    fn sans_match_by_kind_and_value() {
        let der = cert(
            &[(DnType::CommonName, "svc")],
            vec![
                SanType::DnsName("svc.example".try_into().unwrap()),
                SanType::URI("spiffe://example/svc".try_into().unwrap()),
                SanType::IpAddress("10.0.0.7".parse().unwrap()),
                SanType::Rfc822Name("Svc@Example.ORG".try_into().unwrap()),
            ],
        );
        let yes = [
            ("tls_client_auth_san_dns", "SVC.example"),
            ("tls_client_auth_san_uri", "spiffe://example/svc"),
            ("tls_client_auth_san_ip", "10.0.0.7"),
            ("tls_client_auth_san_email", "Svc@example.org"),
        ];
        for (f, v) in yes {
            assert!(m(f, v).matches(&der), "{f} {v}");
        }
        let no = [
            ("tls_client_auth_san_dns", "other.example"),
            ("tls_client_auth_san_dns", "spiffe://example/svc"),
            ("tls_client_auth_san_uri", "spiffe://example/SVC"),
            ("tls_client_auth_san_uri", "svc.example"),
            ("tls_client_auth_san_ip", "10.0.0.8"),
            ("tls_client_auth_san_email", "svc@example.org"),
            // The subject's CN is not a SAN.
            ("tls_client_auth_san_dns", "svc"),
        ];
        for (f, v) in no {
            assert!(!m(f, v).matches(&der), "{f} {v}");
        }
        // Garbage matches nothing.
        assert!(!m("tls_client_auth_san_dns", "svc.example").matches(b"\x30\x03junk"));
        assert!(SubjectMatch::parse("tls_client_auth_san_ip", "ten").is_err());
    }

    #[test]
    fn cert_auth_needs_a_trusted_chain_for_pki_and_a_registered_leaf_for_self_signed() {
        let der = cert(&[(DnType::CommonName, "svc")], vec![]);
        let other = cert(&[(DnType::CommonName, "svc")], vec![]);
        let pki = CertAuth {
            pki: Some(m("tls_client_auth_subject_dn", "CN=svc")),
            self_signed: vec![],
        };
        assert_eq!(
            pki.authenticates(&PeerCert::new(der.clone(), true)),
            Some(TLS_CLIENT_AUTH)
        );
        // The same subject from a chain that did not validate: nothing.
        assert_eq!(pki.authenticates(&PeerCert::new(der.clone(), false)), None);
        let own = CertAuth {
            pki: None,
            self_signed: vec![sha256(&der)],
        };
        assert_eq!(
            own.authenticates(&PeerCert::new(der.clone(), false)),
            Some(SELF_SIGNED_TLS_CLIENT_AUTH)
        );
        // Same subject, another certificate (another key): not registered.
        assert_eq!(own.authenticates(&PeerCert::new(other, false)), None);
    }

    #[test]
    fn thumbprints_from_pem_jwks_and_text_and_forwarded_certificates() {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["svc.example".into()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "svc");
        let c = p.self_signed(&key).unwrap();
        let want = sha256(c.der());
        assert_eq!(thumbprints_of_pem(c.pem().as_bytes()).unwrap(), vec![want]);
        assert!(thumbprints_of_pem(b"nothing").is_err());
        let jwks = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": "AA"},
            {"kty": "EC", "x5c": [STANDARD.encode(c.der())]},
        ]});
        assert_eq!(thumbprints_of_jwks(&jwks.to_string()).unwrap(), vec![want]);
        let bad = serde_json::json!({"keys": [{"x5c": ["!!"]}]});
        assert!(thumbprints_of_jwks(&bad.to_string()).is_err());
        let hex: String = want.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(parse_thumbprint(&hex), Some(want));
        assert_eq!(parse_thumbprint(&URL_SAFE_NO_PAD.encode(want)), Some(want));
        assert_eq!(parse_thumbprint("abc"), None);
        // nginx's $ssl_client_escaped_cert.
        let escaped: String =
            percent_encoding::utf8_percent_encode(&c.pem(), percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        assert_eq!(
            forwarded_leaf(escaped.as_bytes()).as_deref(),
            Some(c.der().as_ref())
        );
        assert_eq!(
            forwarded_leaf(c.pem().as_bytes()).as_deref(),
            Some(c.der().as_ref())
        );
        assert_eq!(
            forwarded_leaf(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            None
        );
        assert_eq!(forwarded_leaf(b""), None);
        let pc = PeerCert::new(c.der().to_vec(), false);
        assert_eq!(pc.x5t_s256(), URL_SAFE_NO_PAD.encode(want));
    }
}
