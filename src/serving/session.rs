//! A connection's handshake: HELLO only as the first frame, the protocol version, and the auth
//! token when the server has one. Until a connection passes, nothing else is served on it.

use featureproxy_protocol::{ErrorCode, ProtocolError, Request, VERSION};

/// Where a connection stands in its handshake.
pub struct Session {
    first_frame: bool,
    authenticated: bool,
}

/// A frame the session refuses, and whether the connection must close for it.
pub struct Refusal {
    pub error: ProtocolError,
    pub close: bool,
}

impl Refusal {
    fn closing(error: ProtocolError) -> Refusal {
        Refusal { error, close: true }
    }
}

impl Session {
    /// A new connection; it must HELLO with `token` first when the server has one.
    pub fn new(token_required: bool) -> Session {
        Session {
            first_frame: true,
            authenticated: !token_required,
        }
    }

    /// True once the handshake is done (or none is required): frames may be served, or shed.
    pub fn is_open(&self) -> bool {
        self.authenticated
    }

    /// Admits one decoded frame (or its decoding error) against the handshake rules.
    pub fn admit(
        &mut self,
        decoded: Result<Request, ProtocolError>,
        token: Option<&str>,
    ) -> Result<Request, Refusal> {
        let first = std::mem::replace(&mut self.first_frame, false);
        let req = match decoded {
            Ok(r) => r,
            Err(e) if !self.authenticated => {
                let msg = format!(
                    "this server requires HELLO with a token as the first frame ({})",
                    e.message
                );
                return Err(Refusal::closing(ProtocolError::new(
                    ErrorCode::Unauthorized,
                    msg,
                )));
            }
            Err(e) => {
                let close = e.code.closes_connection();
                return Err(Refusal { error: e, close });
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
            if let Some(token) = token {
                if !constant_time_eq(token.as_bytes(), h.token.as_bytes()) {
                    let msg = "the HELLO token does not match this server's auth token";
                    return Err(Refusal::closing(ProtocolError::new(
                        ErrorCode::Unauthorized,
                        msg,
                    )));
                }
            }
            self.authenticated = true;
        }
        if !self.authenticated {
            let msg = format!(
                "this server requires HELLO with its auth token as the first frame; got {} first",
                req.op().name()
            );
            return Err(Refusal::closing(ProtocolError::new(
                ErrorCode::Unauthorized,
                msg,
            )));
        }
        Ok(req)
    }
}

/// Compares without an early exit, so response timing does not reveal how much of a guessed
/// token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xFF);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret1"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn a_token_server_refuses_anything_before_hello_and_closes() {
        let mut s = Session::new(true);
        let r = s.admit(Ok(Request::Ping), Some("t")).err().unwrap();
        assert_eq!(r.error.code, ErrorCode::Unauthorized);
        assert!(r.close);
    }

    #[test]
    fn without_a_token_requests_pass_and_a_late_hello_closes() {
        let mut s = Session::new(false);
        assert!(matches!(
            s.admit(Ok(Request::Ping), None),
            Ok(Request::Ping)
        ));
        let hello = Request::Hello(featureproxy_protocol::Hello {
            version: VERSION,
            token: String::new(),
            client_name: String::new(),
        });
        let r = s.admit(Ok(hello), None).err().unwrap();
        assert_eq!(r.error.code, ErrorCode::Malformed);
        assert!(r.close);
    }
}
