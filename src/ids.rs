//! Identifiers that must not be mixed up with each other or with free text: a key id is
//! never a client id, and neither is an actor, a reason or a request id. Each derefs to
//! `str` for reading, compares with strings, and serializes as a plain string.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(id: impl Into<String>) -> $name {
                $name(id.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> $name {
                $name(id)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> $name {
                $name(id.to_string())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.0
            }
        }
    };
}

string_id! {
    /// A signing key's id: the RFC 7638 thumbprint of its public key.
    Kid
}

string_id! {
    /// A configured client's id (`client_id`).
    ClientId
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_and_compare_as_strings_and_serialize_plainly() {
        let kid = Kid::new("abc");
        assert_eq!(&*kid, "abc");
        assert_eq!(kid, "abc");
        assert_eq!(String::from("abc"), kid);
        assert_eq!(serde_json::to_string(&kid).unwrap(), "\"abc\"");
        let back: Kid = serde_json::from_str("\"abc\"").unwrap();
        assert_eq!(back, kid);
        let mut map = std::collections::HashMap::new();
        map.insert(ClientId::new("svc"), 1);
        assert_eq!(map.get("svc"), Some(&1), "looked up by &str");
        assert_eq!(format!("{}", ClientId::new("svc")), "svc");
    }
}
