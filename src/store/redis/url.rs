//! Redis URLs in what the proxy says: logs and errors name the server, never its password.

/// `url` fit for a log line: the password of its user part, if any, replaced by `***`
/// (`redis://user:***@host:port/3`; a lone user part, which Redis URLs also use for a password,
/// becomes `***`). Everything else is kept, so the line still says which server it means.
pub fn redacted(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let user = match rest[..at].split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_string(),
    };
    format!("{}{user}{}", &url[..scheme_end], &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_s_password_never_reaches_a_log_line() {
        let cases = [
            (
                "redis://:s3cret@127.0.0.1:6379/3",
                "redis://:***@127.0.0.1:6379/3",
            ),
            ("redis://app:s3cret@host:6379", "redis://app:***@host:6379"),
            ("redis://s3cret@host", "redis://***@host"),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "redis-cluster://u:p@h:1?node=h:2&node=h:3",
                "redis-cluster://u:***@h:1?node=h:2&node=h:3",
            ),
            // An @ after the host is not a user part.
            ("redis://h:1/0?x=a@b", "redis://h:1/0?x=a@b"),
            ("not a url", "not a url"),
        ];
        for (url, want) in cases {
            assert_eq!(redacted(url), want, "{url}");
        }
    }
}
