//! A connection's handshake and what it may do: HELLO only as the first frame, the protocol
//! version, the token when the server asks for one (which names the connection's principal),
//! and, for every later request, the principal's grant for the view it names. Until a
//! connection passes the handshake, nothing else is served on it.
//!
//! The access table may be replaced while the connection is open (SIGHUP re-reads the access
//! file). A connection keeps its principal, looked up again by name in the new table: narrowed
//! grants apply to its next request, and a principal removed from the file closes it. A token
//! removed from an entry that remains does not close connections it already opened (as Redis
//! ACL does).

use std::sync::Arc;

use featureproxy_protocol::{ErrorCode, Op, ProtocolError, Request, VERSION};
use tokio::sync::watch;

use crate::config::access::{AccessTable, Admission, Grant};
use crate::config::registry::Registry;
use crate::telemetry::counters::AuthFailure;

/// Where a connection stands in its handshake, and who it is.
pub struct Session {
    first_frame: bool,
    authenticated: bool,
    access: watch::Receiver<Arc<AccessTable>>,
    /// The names in the client's TLS certificate (empty without one).
    peer_names: Vec<String>,
    /// The shard, for the principal's counters.
    shard: u16,
    /// The table the principal was found in, and its place there; None for an open server.
    principal: Option<(Arc<AccessTable>, usize)>,
}

/// A frame the session refuses, and whether the connection must close for it.
pub struct Refusal {
    pub error: ProtocolError,
    pub close: bool,
    /// Why the credentials were refused, when they were.
    pub auth: Option<AuthFailure>,
}

impl Refusal {
    fn closing(error: ProtocolError) -> Refusal {
        Refusal {
            error,
            close: true,
            auth: None,
        }
    }

    fn unauthorized(why: AuthFailure, message: impl Into<String>) -> Refusal {
        Refusal {
            auth: Some(why),
            ..Refusal::closing(ProtocolError::new(ErrorCode::Unauthorized, message))
        }
    }
}

impl Session {
    /// A new connection on `shard`, checked against the server's current access table;
    /// `peer_names` are the names its TLS client certificate holds.
    pub fn new(
        mut access: watch::Receiver<Arc<AccessTable>>,
        peer_names: Vec<String>,
        shard: u16,
    ) -> Session {
        let authenticated = !access.borrow_and_update().requires_token();
        Session {
            first_frame: true,
            authenticated,
            access,
            peer_names,
            shard,
            principal: None,
        }
    }

    /// True once the handshake is done (or none is required): frames may be served, or shed.
    pub fn is_open(&self) -> bool {
        self.authenticated
    }

    /// Admits one decoded frame (or its decoding error) against the handshake rules and the
    /// principal's grants. A request the principal may not make is FORBIDDEN, and the
    /// connection stays open.
    pub fn admit(
        &mut self,
        decoded: Result<Request, ProtocolError>,
        registry: &Registry,
    ) -> Result<Request, Refusal> {
        let first = std::mem::replace(&mut self.first_frame, false);
        let req = match decoded {
            Ok(r) => r,
            Err(e) if !self.authenticated => {
                return Err(Refusal::unauthorized(
                    AuthFailure::NoHello,
                    format!(
                        "this server requires HELLO with a token as the first frame ({})",
                        e.message
                    ),
                ));
            }
            Err(e) => {
                let close = e.code.closes_connection();
                return Err(Refusal {
                    error: e,
                    close,
                    auth: None,
                });
            }
        };
        if let Request::Hello(h) = &req {
            if !first {
                let msg = "HELLO is only allowed as the first frame of a connection";
                return Err(Refusal::closing(ProtocolError::malformed(msg)));
            }
            if h.version != VERSION {
                let msg = format!(
                    "protocol version {} is not supported; this server speaks version {VERSION}",
                    h.version
                );
                return Err(Refusal::closing(ProtocolError::new(
                    ErrorCode::UnsupportedVersion,
                    msg,
                )));
            }
            let table = self.access.borrow_and_update().clone();
            match table.admit(&h.token, &self.peer_names) {
                Admission::Open => {}
                Admission::Principal(i, _) => self.principal = Some((table.clone(), i)),
                Admission::CertificateMismatch(p) => {
                    return Err(Refusal::unauthorized(
                        AuthFailure::CertificateMismatch,
                        format!(
                            "principal {:?} must connect over TLS with its client certificate (one its access entry names in cert_names); this connection has {}",
                            p.name,
                            if self.peer_names.is_empty() { "none" } else { "another" }
                        ),
                    ))
                }
                Admission::Refused if h.token.is_empty() && !self.peer_names.is_empty() => {
                    return Err(Refusal::unauthorized(
                        AuthFailure::Missing,
                        "no access entry names this client certificate (cert_names) and HELLO has no token: give a token, or add the certificate's name to an entry",
                    ))
                }
                Admission::Refused if h.token.is_empty() => {
                    return Err(Refusal::unauthorized(
                        AuthFailure::Missing,
                        "this server requires a token in HELLO; none was given",
                    ))
                }
                Admission::Refused => {
                    return Err(Refusal::unauthorized(
                        AuthFailure::Unknown,
                        "the HELLO token is not one this server accepts (unknown, or removed from its access file)",
                    ))
                }
            }
            self.authenticated = true;
            return Ok(req);
        }
        if !self.authenticated {
            return Err(Refusal::unauthorized(
                AuthFailure::NoHello,
                format!(
                    "this server requires HELLO with a token as the first frame; got {} first",
                    req.op().name()
                ),
            ));
        }
        self.authorize(&req, registry)?;
        Ok(req)
    }

    /// Checks the principal's grant for the view `req` names (after taking in a new access
    /// table, if one came).
    fn authorize(&mut self, req: &Request, registry: &Registry) -> Result<(), Refusal> {
        let Some((table, index)) = &mut self.principal else {
            return Ok(());
        };
        if self.access.has_changed().unwrap_or(false) {
            let newer = self.access.borrow_and_update().clone();
            let name = table.principal(*index).map(|p| p.name.clone());
            match name.as_deref().and_then(|n| newer.by_name(n)) {
                Some((i, _)) => *index = i,
                None => {
                    return Err(Refusal::unauthorized(
                        AuthFailure::Removed,
                        format!(
                            "principal {:?} was removed from the access file",
                            name.unwrap_or_default()
                        ),
                    ))
                }
            }
            *table = newer;
        }
        let Some(principal) = table.principal(*index) else {
            return Ok(());
        };
        let counts = principal.counts.of(self.shard);
        counts.requests.inc();
        let (op, view, allowed) = match req {
            Request::Get(g) => (Op::Get, g.view_id, principal.may(Grant::Read, g.view_id)),
            Request::Put(p) => (Op::Put, p.view_id, principal.may(Grant::Write, p.view_id)),
            Request::Schema { view } => match registry.by_name(view) {
                Some(v) => (
                    Op::Schema,
                    v.id,
                    principal.may(Grant::Read, v.id) || principal.may(Grant::Write, v.id),
                ),
                // Unknown views are answered UNKNOWN_VIEW by the request itself.
                None => return Ok(()),
            },
            Request::Hello(_) | Request::Ping => return Ok(()),
        };
        // A view id the registry does not know is answered UNKNOWN_VIEW by the request itself.
        let Some(view) = registry.by_id(view) else {
            return Ok(());
        };
        if allowed {
            return Ok(());
        }
        counts.forbid(op);
        Err(Refusal {
            error: ProtocolError::new(
                ErrorCode::Forbidden,
                format!(
                    "principal {:?} may not {} view {:?}: ask for a grant in the proxy's access file",
                    principal.name,
                    op.name(),
                    view.name
                ),
            ),
            close: false,
            auth: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::access::token_hash;
    use featureproxy_protocol::{GetRequest, Hello, Keys};

    fn registry() -> Registry {
        crate::config::registry::example()
    }

    fn hello(token: &str) -> Request {
        Request::Hello(Hello {
            version: VERSION,
            token: token.into(),
            client_name: String::new(),
        })
    }

    fn get(view_id: u16) -> Request {
        Request::Get(GetRequest {
            view_id,
            flags: 0,
            schema_id: 0,
            deadline_us: 0,
            keys: Keys::from_slices(&["u1"]),
        })
    }

    fn table(reg: &Registry, text: &str) -> Arc<AccessTable> {
        let hex =
            |t: &str| -> String { token_hash(t).iter().map(|b| format!("{b:02x}")).collect() };
        let text = text
            .replace("HASH(r)", &hex("r"))
            .replace("HASH(w)", &hex("w"));
        Arc::new(AccessTable::from_toml(&text, "access.toml", reg).unwrap())
    }

    #[test]
    fn a_token_server_refuses_anything_before_hello_and_closes() {
        let reg = registry();
        let (_tx, rx) = watch::channel(Arc::new(AccessTable::load(None, Some("t"), &reg).unwrap()));
        let mut s = Session::new(rx, Vec::new(), 0);
        let r = s.admit(Ok(Request::Ping), &reg).err().unwrap();
        assert_eq!(r.error.code, ErrorCode::Unauthorized);
        assert!(r.close);
    }

    #[test]
    fn without_a_token_requests_pass_and_a_late_hello_closes() {
        let reg = registry();
        let (_tx, rx) = watch::channel(Arc::new(AccessTable::open()));
        let mut s = Session::new(rx, Vec::new(), 0);
        assert!(matches!(
            s.admit(Ok(Request::Ping), &reg),
            Ok(Request::Ping)
        ));
        let r = s.admit(Ok(hello("")), &reg).err().unwrap();
        assert_eq!(r.error.code, ErrorCode::Malformed);
        assert!(r.close);
    }

    #[test]
    fn grants_decide_each_request_and_a_reload_applies_to_open_connections() {
        let reg = registry();
        let user = reg.by_name("user_features").unwrap().id;
        let other = reg.views().iter().find(|v| v.id != user).unwrap().id;
        let (tx, rx) = watch::channel(table(
            &reg,
            "[[access]]\nname = \"reader\"\ntoken_sha256 = [\"HASH(r)\"]\nread = [\"user_features\"]\n",
        ));
        let mut s = Session::new(rx.clone(), Vec::new(), 0);
        s.admit(Ok(hello("r")), &reg).ok().unwrap();
        assert!(s.admit(Ok(get(user)), &reg).is_ok());
        let r = s.admit(Ok(get(other)), &reg).err().unwrap();
        assert_eq!(r.error.code, ErrorCode::Forbidden);
        assert!(!r.close, "FORBIDDEN keeps the connection");
        assert!(
            r.error.message.contains("\"reader\" may not GET"),
            "{}",
            r.error.message
        );
        let r = s
            .admit(
                Ok(Request::Schema {
                    view: reg.by_id(other).unwrap().name.clone(),
                }),
                &reg,
            )
            .err()
            .unwrap();
        assert_eq!(r.error.code, ErrorCode::Forbidden);

        // Narrowed: the open connection loses the grant at its next request.
        tx.send(table(
            &reg,
            "[[access]]\nname = \"reader\"\ntoken_sha256 = [\"HASH(r)\"]\n[[access]]\nname = \"w\"\ntoken_sha256 = [\"HASH(w)\"]\nwrite = [\"*\"]\n",
        ))
        .unwrap();
        let r = s.admit(Ok(get(user)), &reg).err().unwrap();
        assert_eq!(r.error.code, ErrorCode::Forbidden);
        // Removed: the open connection closes.
        tx.send(table(
            &reg,
            "[[access]]\nname = \"w\"\ntoken_sha256 = [\"HASH(w)\"]\nwrite = [\"*\"]\n",
        ))
        .unwrap();
        let r = s.admit(Ok(Request::Ping), &reg).err().unwrap();
        assert_eq!(r.error.code, ErrorCode::Unauthorized);
        assert!(r.close);
        assert_eq!(r.auth, Some(AuthFailure::Removed));
        // And its token opens nothing new.
        let mut s = Session::new(rx, Vec::new(), 0);
        let r = s.admit(Ok(hello("r")), &reg).err().unwrap();
        assert_eq!(r.error.code, ErrorCode::Unauthorized);
    }
}
