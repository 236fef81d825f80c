//! A JSON object written member by member, for answers on the hot paths (introspection,
//! tokens): the names are latch's own and never escaped, and a string value is copied as
//! it is when it needs no escape, which latch's own values (tokens, ids, scopes) never do.

use bytes::Bytes;
use serde::Serialize;

/// A JSON object written member by member. Names are `&'static str` of ours and are
/// never escaped; values go through [`JsonObject::str`] (escaped only when they need it)
/// or serde_json.
pub(super) struct JsonObject {
    out: Vec<u8>,
}

impl JsonObject {
    pub(super) fn with_capacity(n: usize) -> JsonObject {
        let mut out = Vec::with_capacity(n);
        out.push(b'{');
        JsonObject { out }
    }

    fn name(&mut self, name: &'static str) {
        debug_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        if self.out.len() > 1 {
            self.out.push(b',');
        }
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    /// A value already in JSON form (`true`).
    pub(super) fn raw(&mut self, name: &'static str, json: &'static str) {
        self.name(name);
        self.out.extend_from_slice(json.as_bytes());
    }

    pub(super) fn str(&mut self, name: &'static str, value: &str) {
        self.name(name);
        // JSON needs an escape only for '"', '\\' and control characters. A fold without
        // early exit, so the compiler checks many bytes per instruction.
        let needs_escape = value.bytes().fold(false, |any, b| {
            any | (b < 0x20) | (b == b'"') | (b == b'\\')
        });
        if !needs_escape {
            self.out.push(b'"');
            self.out.extend_from_slice(value.as_bytes());
            self.out.push(b'"');
        } else {
            // Writing a string into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut self.out, value);
        }
    }

    pub(super) fn int(&mut self, name: &'static str, value: i64) {
        self.name(name);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    pub(super) fn value(&mut self, name: &'static str, value: &impl Serialize) {
        self.name(name);
        // Our own claim types and serde_json values: serializing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.out, value);
    }

    pub(super) fn finish(mut self) -> Bytes {
        self.out.push(b'}');
        Bytes::from(self.out)
    }
}
