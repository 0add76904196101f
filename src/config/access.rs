//! Who may do what: the access file's principals, each with the hashes of its tokens and the
//! views it may read and write, resolved against the registry into per-view grants.
//!
//! The file is kept apart from the config file (teams keep the registry in git; secrets do not
//! belong there) and holds only SHA-256 hashes of tokens:
//!
//! ```toml
//! [[access]]
//! name = "ranker-prod"                     # the principal, as logs name it
//! token_sha256 = ["9f86d081884c7d65..."]   # one or two (old and new, while rotating)
//! read = ["user_features", "item_*"]       # view names or globs; "*" is every view
//! write = []
//! ```
//!
//! Once an access file is given, access is denied by default: a token no entry holds is refused,
//! and a view no grant names is FORBIDDEN. The single `auth_token` setting is the simple case: a
//! principal named `auth_token` that reads and writes every view.
//!
//! With mutual TLS, an entry may name its client certificates instead of, or as well as, tokens:
//! `cert_names = ["spiffe://prod/ranker"]` matches a certificate holding that DNS or URI
//! subjectAltName. An entry with names and no token admits such a connection with no token in
//! its HELLO; one with both asks for both (the token, over a connection with such a
//! certificate).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::registry::Registry;
use crate::store::ViewId;
use crate::telemetry::counters::PrincipalCounts;

/// A token's SHA-256, the only form in which the proxy keeps it.
pub type TokenHash = [u8; 32];

/// The SHA-256 of a token.
pub fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// Why an access file cannot be used (nothing of it is applied).
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("cannot read the access file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("access file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("access file {path}, entry {entry:?}: {message}")]
    Entry {
        path: String,
        entry: String,
        message: String,
    },
}

/// An operation a grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// GET and SCHEMA.
    Read,
    /// PUT (and SCHEMA).
    Write,
}

impl Grant {
    pub fn name(self) -> &'static str {
        match self {
            Grant::Read => "read",
            Grant::Write => "write",
        }
    }
}

/// One principal, its grants resolved to the registry's view ids.
#[derive(Debug)]
pub struct Principal {
    pub name: String,
    read: Vec<bool>,
    write: Vec<bool>,
    /// Certificate names (DNS or URI subjectAltNames) one of which the connection's client
    /// certificate must hold; empty: no certificate asked for.
    cert_names: Vec<String>,
    /// What the principal did, for the metrics; the same counters after a reload that keeps it.
    pub counts: Arc<PrincipalCounts>,
    /// May ask for `POST /admin/reload` on the stats port (with its token).
    pub admin: bool,
}

impl Principal {
    /// True when the principal may do `grant` on view `view`.
    pub fn may(&self, grant: Grant, view: ViewId) -> bool {
        let set = match grant {
            Grant::Read => &self.read,
            Grant::Write => &self.write,
        };
        set.get(view as usize).copied().unwrap_or(false)
    }

    /// True when a connection whose client certificate holds `peer_names` may be this
    /// principal.
    fn certificate_fits(&self, peer_names: &[String]) -> bool {
        self.cert_names.is_empty() || self.cert_names.iter().any(|n| peer_names.contains(n))
    }
}

/// Every principal, and which token hash names which: what a connection is checked against.
#[derive(Debug, Default)]
pub struct AccessTable {
    principals: Vec<Principal>,
    by_token: HashMap<TokenHash, usize>,
    /// Certificate names of the entries that hold no token.
    by_cert: HashMap<String, usize>,
    /// True when no token is asked for (no access file, no `auth_token`): every connection is
    /// the anonymous principal, which may do everything.
    open: bool,
}

/// What a HELLO's credentials name.
pub enum Admission<'a> {
    /// The server asks for no credentials.
    Open,
    /// The credentials' principal.
    Principal(usize, &'a Principal),
    /// No principal holds the token (or, without a token, the certificate's names).
    Refused,
    /// The token's principal asks for a client certificate this connection does not have.
    CertificateMismatch(&'a Principal),
}

impl AccessTable {
    /// No token needed; everyone may do everything.
    pub fn open() -> AccessTable {
        AccessTable {
            open: true,
            ..AccessTable::default()
        }
    }

    /// The table for a server started with `access_file` and/or `auth_token`, read and checked
    /// whole: an error leaves nothing half-applied. With neither, [`AccessTable::open`].
    pub fn load(
        access_file: Option<&Path>,
        auth_token: Option<&str>,
        registry: &Registry,
    ) -> Result<AccessTable, AccessError> {
        let mut table = match access_file {
            None if auth_token.is_none() => return Ok(AccessTable::open()),
            None => AccessTable::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| AccessError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                AccessTable::from_toml(&text, &path.display().to_string(), registry)?
            }
        };
        if let Some(token) = auth_token {
            let all = vec![true; registry.views().len() + 1];
            table.add(
                Principal {
                    name: "auth_token".into(),
                    read: all.clone(),
                    write: all,
                    cert_names: Vec::new(),
                    counts: Arc::default(),
                    admin: false,
                },
                &[token_hash(token)],
                "the auth_token setting",
            )?;
        }
        Ok(table)
    }

    /// Parses and checks an access file's text; `origin` names it in errors.
    pub fn from_toml(
        text: &str,
        origin: &str,
        registry: &Registry,
    ) -> Result<AccessTable, AccessError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| AccessError::Parse {
            path: origin.to_string(),
            message: e.message().to_string(),
        })?;
        let mut table = AccessTable::default();
        for entry in raw.access {
            let bad = |message: String| AccessError::Entry {
                path: origin.to_string(),
                entry: entry.name.clone(),
                message,
            };
            if entry.name.is_empty() || !entry.name.chars().all(name_char) {
                return Err(bad(
                    "name must be 1 or more of letters, digits, '-', '_' and '.' (it is a metric label)".into(),
                ));
            }
            if table.principals.iter().any(|p| p.name == entry.name) {
                return Err(bad("the name is used by another entry".into()));
            }
            if entry.token_sha256.is_empty() && entry.cert_names.is_empty() {
                return Err(bad(
                    "token_sha256 is empty: give the hex SHA-256 of its token (`featureproxy token new --name NAME` makes one), or cert_names for client certificates".into(),
                ));
            }
            if entry.cert_names.iter().any(|n| n.is_empty()) {
                return Err(bad("cert_names holds an empty name".into()));
            }
            let hashes = entry
                .token_sha256
                .iter()
                .map(|h| parse_hash(h).map_err(|why| bad(format!("token_sha256 {h:?}: {why}"))))
                .collect::<Result<Vec<_>, _>>()?;
            let principal = Principal {
                name: entry.name.clone(),
                read: resolve(&entry.read, registry).map_err(|why| bad(format!("read: {why}")))?,
                write: resolve(&entry.write, registry)
                    .map_err(|why| bad(format!("write: {why}")))?,
                cert_names: entry.cert_names.clone(),
                counts: Arc::default(),
                admin: entry.admin,
            };
            table.add(principal, &hashes, origin)?;
        }
        Ok(table)
    }

    fn add(
        &mut self,
        principal: Principal,
        hashes: &[TokenHash],
        origin: &str,
    ) -> Result<(), AccessError> {
        let index = self.principals.len();
        for h in hashes {
            if let Some(&other) = self.by_token.get(h) {
                return Err(AccessError::Entry {
                    path: origin.to_string(),
                    entry: principal.name.clone(),
                    message: format!(
                        "a token of this entry is also a token of {:?}: each token names one principal",
                        self.principals[other].name
                    ),
                });
            }
            self.by_token.insert(*h, index);
        }
        if hashes.is_empty() {
            for name in &principal.cert_names {
                if let Some(&other) = self.by_cert.get(name) {
                    return Err(AccessError::Entry {
                        path: origin.to_string(),
                        entry: principal.name.clone(),
                        message: format!(
                            "cert_names {name:?} is also a name of {:?}, which holds no token either: a certificate must name one principal",
                            self.principals[other].name
                        ),
                    });
                }
                self.by_cert.insert(name.clone(), index);
            }
        }
        self.principals.push(principal);
        Ok(())
    }

    /// True when a connection must HELLO with a token.
    pub fn requires_token(&self) -> bool {
        !self.open
    }

    /// The principal a HELLO's token names, or without a token, the principal the client
    /// certificate's names (`peer_names`) name. The lookup is by the token's hash: timing can
    /// tell at most which hash bits matched, nothing of the token.
    pub fn admit(&self, token: &str, peer_names: &[String]) -> Admission<'_> {
        if self.open {
            return Admission::Open;
        }
        if token.is_empty() {
            return match peer_names.iter().find_map(|n| self.by_cert.get(n)) {
                Some(&i) => Admission::Principal(i, &self.principals[i]),
                None => Admission::Refused,
            };
        }
        match self.by_token.get(&token_hash(token)) {
            Some(&i) if !self.principals[i].certificate_fits(peer_names) => {
                Admission::CertificateMismatch(&self.principals[i])
            }
            Some(&i) => Admission::Principal(i, &self.principals[i]),
            None => Admission::Refused,
        }
    }

    /// Keeps the counters of `older`'s principals that this table names too, so a reload does
    /// not reset them.
    pub fn keep_counts(&mut self, older: &AccessTable) {
        for p in &mut self.principals {
            if let Some((_, old)) = older.by_name(&p.name) {
                p.counts = old.counts.clone();
            }
        }
    }

    /// True when some principal may use the stats port's admin endpoints: they then ask for
    /// one of its tokens.
    pub fn has_admins(&self) -> bool {
        self.principals.iter().any(|p| p.admin)
    }

    /// The admin principal `token` names, if any.
    pub fn admin(&self, token: &str) -> Option<&Principal> {
        let &i = self.by_token.get(&token_hash(token))?;
        let p = &self.principals[i];
        p.admin.then_some(p)
    }

    /// Every principal, in the file's order.
    pub fn principals(&self) -> &[Principal] {
        &self.principals
    }

    /// The principal named `name`, after a reload: its new grants, or None if it was removed.
    pub fn by_name(&self, name: &str) -> Option<(usize, &Principal)> {
        self.principals
            .iter()
            .enumerate()
            .find(|(_, p)| p.name == name)
    }

    /// The principal at `index` (as [`AccessTable::admit`] gave it).
    pub fn principal(&self, index: usize) -> Option<&Principal> {
        self.principals.get(index)
    }

    /// How many principals the table holds.
    pub fn len(&self) -> usize {
        self.principals.len()
    }

    /// True when the table holds no principal.
    pub fn is_empty(&self) -> bool {
        self.principals.is_empty()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    access: Vec<RawEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: String,
    #[serde(default)]
    token_sha256: Vec<String>,
    #[serde(default)]
    cert_names: Vec<String>,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn parse_hash(hex: &str) -> Result<TokenHash, String> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return Err(format!(
            "{} hex digits; a SHA-256 is 64 (did you paste the token itself? paste its hash)",
            hex.len()
        ));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| "not hexadecimal".to_string())?;
    }
    Ok(out)
}

/// The view ids `patterns` name, as a set indexed by view id. A pattern naming no view is an
/// error: a typo would otherwise deny in silence.
fn resolve(patterns: &[String], registry: &Registry) -> Result<Vec<bool>, String> {
    let mut set = vec![false; registry.views().len() + 1];
    for pattern in patterns {
        let mut matched = false;
        for view in registry.views() {
            if glob(pattern, &view.name) {
                set[view.id as usize] = true;
                matched = true;
            }
        }
        if !matched {
            return Err(format!(
                "{pattern:?} names no view; this server serves: {}",
                registry.names()
            ));
        }
    }
    Ok(set)
}

/// `*` matches any run of characters (none included); everything else matches itself.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len())
                .filter(|&i| rest.is_char_boundary(i))
                .any(|i| glob(tail, &rest[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        crate::config::registry::example()
    }

    fn hex(h: TokenHash) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn globs_match_names_as_written() {
        assert!(glob("*", "anything"));
        assert!(glob("item_*", "item_features"));
        assert!(!glob("item_*", "user_features"));
        assert!(glob("*_features", "user_features"));
        assert!(glob("u*_f*s", "user_features"));
        assert!(glob("user_features", "user_features"));
        assert!(!glob("user_feature", "user_features"));
    }

    #[test]
    fn tokens_name_their_principal_and_grants_resolve_per_view() {
        let reg = registry();
        let view = |name: &str| reg.by_name(name).unwrap().id;
        let text = format!(
            "[[access]]\nname = \"ranker\"\ntoken_sha256 = [\"{}\", \"{}\"]\nread = [\"user_*\"]\n\n[[access]]\nname = \"writer\"\ntoken_sha256 = [\"{}\"]\nread = [\"*\"]\nwrite = [\"*\"]\n",
            hex(token_hash("old")),
            hex(token_hash("new")),
            hex(token_hash("w"))
        );
        let t = AccessTable::from_toml(&text, "access.toml", &reg).unwrap();
        assert!(t.requires_token());
        for token in ["old", "new"] {
            let Admission::Principal(_, p) = t.admit(token, &[]) else {
                panic!("{token} is ranker's")
            };
            assert_eq!(p.name, "ranker");
            assert!(p.may(Grant::Read, view("user_features")));
            assert!(!p.may(Grant::Write, view("user_features")));
        }
        let Admission::Principal(_, w) = t.admit("w", &[]) else {
            panic!("w is writer's")
        };
        for v in reg.views() {
            assert!(w.may(Grant::Read, v.id) && w.may(Grant::Write, v.id));
        }
        assert!(matches!(t.admit("nobody", &[]), Admission::Refused));
        assert!(matches!(t.admit("", &[]), Admission::Refused));
    }

    #[test]
    fn a_bad_entry_is_refused_naming_the_entry_and_what_is_wrong() {
        let reg = registry();
        let h = hex(token_hash("t"));
        for (text, says) in [
            (
                "[[access]]\nname = \"a\"\ntoken_sha256 = [\"t0ken\"]\n".to_string(),
                "64",
            ),
            (format!("[[access]]\nname = \"a\"\ntoken_sha256 = [\"{h}\"]\nread = [\"nope_*\"]\n"), "names no view"),
            (format!("[[access]]\nname = \"a b\"\ntoken_sha256 = [\"{h}\"]\n"), "name must be"),
            ("[[access]]\nname = \"a\"\n".to_string(), "token_sha256 is empty"),
            (format!("[[access]]\nname = \"a\"\ntoken_sha256 = [\"{h}\"]\n[[access]]\nname = \"b\"\ntoken_sha256 = [\"{h}\"]\n"), "also a token of \"a\""),
            (format!("[[access]]\nname = \"a\"\ntoken_sha256 = [\"{h}\"]\nreed = []\n"), "unknown field"),
        ] {
            let e = AccessTable::from_toml(&text, "access.toml", &reg)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{e}");
            assert!(e.starts_with("access file access.toml"), "{e}");
        }
    }

    #[test]
    fn auth_token_alone_is_one_principal_with_every_grant_and_neither_is_open() {
        let reg = registry();
        let t = AccessTable::load(None, Some("s3cret"), &reg).unwrap();
        let Admission::Principal(_, p) = t.admit("s3cret", &[]) else {
            panic!("the auth token admits")
        };
        assert_eq!(p.name, "auth_token");
        assert!(reg.views().iter().all(|v| p.may(Grant::Write, v.id)));
        assert!(matches!(t.admit("wrong", &[]), Admission::Refused));
        let open = AccessTable::load(None, None, &reg).unwrap();
        assert!(!open.requires_token());
        assert!(matches!(open.admit("anything", &[]), Admission::Open));
    }
}
