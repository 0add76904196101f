//! The operators' status page, served at `/` on the stats port: one HTML file, one script and
//! one style sheet, embedded in the binary. The script polls `/stats` (same origin) once a
//! second and draws the page; nothing else is loaded (no font, CDN or inline script: the
//! endpoint's Content-Security-Policy, [`super::SECURITY`], would refuse it).

pub const INDEX_HTML: &str = include_str!("index.html");
pub const STATUS_JS: &str = include_str!("status.js");
pub const STATUS_CSS: &str = include_str!("status.css");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files() {
        // No inline script or style (the CSP refuses both), nothing from another origin, and a
        // data: favicon so the browser asks for no /favicon.ico.
        assert!(INDEX_HTML.contains(r#"<script src="/status.js" defer></script>"#));
        assert!(INDEX_HTML.contains(r#"<link rel="stylesheet" href="/status.css">"#));
        assert!(INDEX_HTML.contains(r#"<link rel="icon" href="data:,">"#));
        assert_eq!(INDEX_HTML.matches("<script").count(), 1);
        assert!(!INDEX_HTML.contains("<style") && !INDEX_HTML.contains("style="));
        for text in [INDEX_HTML, STATUS_JS, STATUS_CSS] {
            // The SVG namespace is a name, not a place the browser goes.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains("@import") && !text.contains("url("));
        }
        assert!(!STATUS_JS.contains("innerHTML") && !STATUS_JS.contains("eval("));
    }
}
