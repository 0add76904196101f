//! `POST /admin/reload`: the reload SIGHUP does, for tools that cannot send signals, with the
//! answer in the reply. Whoever can reach it can make the proxy re-read its files, so it answers
//! loopback peers only, refuses a browser's cross-site request (an `Origin` header), and, when
//! the access file names an admin principal (`admin = true`), asks for one of its tokens
//! (`Authorization: Bearer TOKEN`). It never takes a config in its body: it re-reads the files
//! given at start.

use serde_json::json;

use super::{Request, Response, Sources};
use crate::reload::ReloadError;

/// Answers `POST /admin/reload`.
pub fn reload(req: &Request, src: &Sources) -> Response {
    if let Some(refusal) = refuse(req, src) {
        return refusal;
    }
    let answer = |status, v: serde_json::Value| {
        Response::new(status, "application/json", v.to_string() + "\n")
    };
    match src.reloader.reload("POST /admin/reload") {
        Ok(report) => answer(
            200,
            json!({
                "generation": report.generation,
                "added": report.changes.added,
                "removed": report.changes.removed,
                "changed": report.changes.changed.iter()
                    .map(|(view, what)| json!({"view": view, "what": what}))
                    .collect::<Vec<_>>(),
            }),
        ),
        Err(ReloadError::Busy) => answer(409, json!({"error": ReloadError::Busy.to_string()})),
        Err(e) => answer(
            422,
            json!({
                "generation": src.reloads.generation.get(),
                "error": e.to_string(),
            }),
        ),
    }
}

/// Why `req` may not reload, if it may not.
fn refuse(req: &Request, src: &Sources) -> Option<Response> {
    let text = |status, msg: &str| Some(Response::new(status, "text/plain", format!("{msg}\n")));
    if !req.peer.is_some_and(|p| p.ip().is_loopback()) {
        return text(
            403,
            "admin endpoints answer loopback peers only: call it on the proxy's host",
        );
    }
    if req.header("Origin").is_some() {
        return text(
            403,
            "admin endpoints refuse browser requests (an Origin header): use curl or a tool",
        );
    }
    let access = src.access_table.borrow().clone();
    if !access.has_admins() {
        return None;
    }
    let token = req
        .header("Authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match token.and_then(|t| access.admin(t)) {
        Some(_) => None,
        None => {
            let mut r = Response::new(
                401,
                "text/plain",
                "this proxy's access file names admin principals: send Authorization: Bearer TOKEN with the token of one (admin = true)\n",
            );
            r.headers.push(("WWW-Authenticate", "Bearer"));
            Some(r)
        }
    }
}
