//! The key set as a store holds it: named, opaque entries under one version.

/// One entry of the key set as the store holds it: a name (the kid, or the manifest's
/// name) and opaque JSON. Stores do not interpret it: `keys::integrity` authenticates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub name: String,
    pub json: String,
}

/// Every stored key entry with the version of the set, for compare-and-set updates.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    pub version: u64,
    pub entries: Vec<StoredKey>,
}
