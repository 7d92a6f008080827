//! The dashboard's files, built into the binary (no CDN, no build step).
//! Only these paths exist: anything else, `/../` included, is a 404.
//! Pages load no inline script; the Content-Security-Policy forbids it.

use hyper::header::HeaderValue;
use hyper::Method;

const INDEX: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");
const UI_JS: &str = include_str!("dashboard/ui.js");
const PAGES_JS: &str = include_str!("dashboard/pages.js");
const FAVICON: &str = include_str!("dashboard/favicon.svg");
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

pub fn asset(method: &Method, path: &str) -> Option<hyper::Response<super::Body>> {
    if method != Method::GET {
        return None;
    }
    let (body, kind) = match path {
        "/" | "/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "/app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "/ui.js" => (UI_JS, "text/javascript; charset=utf-8"),
        "/pages.js" => (PAGES_JS, "text/javascript; charset=utf-8"),
        "/favicon.svg" => (FAVICON, "image/svg+xml"),
        _ => return None,
    };
    let mut reply = super::text(body.to_string(), kind);
    let h = reply.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    Some(reply)
}
