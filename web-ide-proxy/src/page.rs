//! The IDE page (HTML, script, styles) comes from here, never from the sandbox: the agent inside
//! a sandbox runs as the learner and can be replaced by learner code, so nothing it returns may
//! run as script on the runner's origin (see docs/ARCHITECTURE.md, "The web IDE").
//!
//! The bundle is built from `web/` by `build.rs` (npm + esbuild) and embedded in the binary; it
//! is sent gzipped when the browser takes it and revalidated by ETag.

use std::{collections::HashMap, hash::Hasher, io::Write, sync::Mutex, sync::OnceLock};

use axum::{
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};

const INDEX: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/web/index.html"));
const APP_JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/web/app.js"));
const APP_CSS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/web/app.css"));

/// The page may load only its own script and styles and talk only to its own origin (which
/// includes its WebSockets). CodeMirror and xterm.js set element styles, hence inline styles.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; font-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'";

/// The embedded asset at `rest` (the path below `/ide/{session}/`), if it is one.
pub fn asset_at(rest: &str) -> Option<(&'static str, &'static [u8])> {
    match rest {
        "" => Some(("text/html; charset=utf-8", INDEX)),
        "app.js" => Some(("text/javascript; charset=utf-8", APP_JS)),
        "app.css" => Some(("text/css; charset=utf-8", APP_CSS)),
        _ => None,
    }
}

/// An embedded asset, gzipped once and tagged with its content hash.
struct Packed {
    gzip: Vec<u8>,
    etag: String,
}

fn packed(body: &'static [u8]) -> &'static Packed {
    static CACHE: OnceLock<Mutex<HashMap<usize, &'static Packed>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().expect("lock");
    cache.entry(body.as_ptr() as usize).or_insert_with(|| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(body).expect("gzip in memory");
        let mut h = std::collections::hash_map::DefaultHasher::new();
        h.write(body);
        Box::leak(Box::new(Packed {
            gzip: gz.finish().expect("gzip in memory"),
            etag: format!("\"{:016x}\"", h.finish()),
        }))
    })
}

/// Serves an embedded asset with the page's security headers.
pub fn serve(req: &HeaderMap, content_type: &'static str, body: &'static [u8]) -> Response {
    serve_with_policy(req, content_type, body, PAGE_CSP)
}

/// Serves an embedded asset (gzipped when taken, revalidated by ETag) under the given
/// Content-Security-Policy: for other embedded pages of the runner (the operators' dashboard).
pub fn serve_with_policy(
    req: &HeaderMap,
    content_type: &'static str,
    body: &'static [u8],
    csp: &'static str,
) -> Response {
    let p = packed(body);
    let mut resp = if req.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(p.etag.as_str()) {
        StatusCode::NOT_MODIFIED.into_response()
    } else if req.get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("gzip")) {
        ([(header::CONTENT_TYPE, content_type), (header::CONTENT_ENCODING, "gzip")], p.gzip.clone()).into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], body).into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, HeaderValue::from_str(&p.etag).expect("hex etag"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

/// A short page for a browser that navigated to an IDE it cannot open (ended session, expired
/// link): inside the exercise page's iframe a learner reads a sentence, not a JSON body.
pub fn error_page(status: StatusCode, code: &str, message: &str) -> Response {
    let escaped: String = message
        .chars()
        .map(|c| match c {
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '&' => "&amp;".to_string(),
            '"' => "&quot;".to_string(),
            c => c.to_string(),
        })
        .collect();
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>IDE unavailable</title>\
         <style>body{{font:16px system-ui,sans-serif;margin:3em auto;max-width:36em;color:#222}}\
         code{{color:#666}}</style></head><body><h1>The IDE is not available</h1><p>{escaped}</p>\
         <p><code>{code}</code></p></body></html>"
    );
    let mut resp = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_three_bundle_files_are_assets() {
        assert!(asset_at("").is_some() && asset_at("app.js").is_some() && asset_at("app.css").is_some());
        for other in ["index.html", "api/files", "app.js/x", "../app.js", "APP.JS"] {
            assert!(asset_at(other).is_none(), "{other}");
        }
    }

    #[tokio::test]
    async fn the_error_page_escapes_its_message() {
        let resp = error_page(StatusCode::CONFLICT, "session_not_running", "<script>x</script> & more");
        assert_eq!(resp.status(), StatusCode::CONFLICT);
        assert!(resp.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().starts_with("default-src 'none'"));
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.contains("&lt;script&gt;x&lt;/script&gt; &amp; more") && !text.contains("<script>"), "{text}");
    }
}
