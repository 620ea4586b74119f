//! The dashboard's pages: the single-page app (built from `runner/dashboard/` by `build.rs`,
//! embedded, served gzipped with an ETag under a strict CSP), the sign-in form, and the short
//! pages a browser gets where a script would get JSON.

use axum::{
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};

const INDEX: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/dashboard/index.html"));
const APP_JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/dashboard/app.js"));
const APP_CSS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/dashboard/app.css"));

/// The app loads only its own script and styles (uPlot and the page set styles through the
/// CSSOM, which `style-src 'self'` allows), talks only to its own origin, and is never framed
/// (its buttons stop sessions and drain the runner: no clickjacking).
pub const APP_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Pages rendered here carry no script at all; their styles are inline.
const PAGE_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// Referrers stay on this origin. Not `no-referrer`: under it browsers send `Origin: null` with
/// a form's or a script's POST, and the same-origin rule (`auth::same_origin`) needs the origin.
const REFERRER_POLICY: &str = "same-origin";

/// The embedded asset at `name` (below `/dashboard/`), if it is one.
pub fn asset(name: &str) -> Option<(&'static str, &'static [u8])> {
    match name {
        "" => Some(("text/html; charset=utf-8", INDEX)),
        "app.js" => Some(("text/javascript; charset=utf-8", APP_JS)),
        "app.css" => Some(("text/css; charset=utf-8", APP_CSS)),
        _ => None,
    }
}

pub fn serve(req: &HeaderMap, content_type: &'static str, body: &'static [u8]) -> Response {
    let mut resp = web_ide_proxy::page::serve_with_policy(req, content_type, body, APP_CSP);
    resp.headers_mut().insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static(REFERRER_POLICY));
    resp
}

fn escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '&' => "&amp;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&#39;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

const STYLE: &str = "body{font:15px/1.5 system-ui,sans-serif;background:#f4f5f7;color:#1d2330;margin:0}\
    main{max-width:26em;margin:12vh auto;background:#fff;border:1px solid #e3e6ea;border-radius:10px;padding:24px 28px}\
    h1{font-size:20px;margin:0 0 4px}p{margin:8px 0}.muted{color:#6b7280;font-size:13px}\
    label{display:block;margin:16px 0 6px;font-weight:600}\
    input{width:100%;box-sizing:border-box;font:inherit;padding:8px 10px;border:1px solid #c9ced6;border-radius:6px}\
    button{margin-top:14px;font:inherit;padding:8px 16px;border-radius:6px;border:0;background:#2d6cdf;color:#fff;cursor:pointer}\
    .error{color:#c0392b;background:#fadbd6;padding:8px 10px;border-radius:6px}code{color:#6b7280}";

fn html(status: StatusCode, title: &str, body: &str) -> Response {
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <link rel=\"icon\" href=\"data:,\">\
         <title>{}</title><style>{STYLE}</style></head><body><main>{body}</main></body></html>",
        escape(title)
    );
    let mut resp = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static(REFERRER_POLICY));
    resp
}

/// The sign-in form (with `error`, the reason the last attempt was refused).
pub fn login(status: StatusCode, error: Option<&str>) -> Response {
    let error = error.map(|e| format!("<p class=\"error\" role=\"alert\" id=\"login-error\">{}</p>", escape(e)));
    html(
        status,
        "Sign in · exercise-runner",
        &format!(
            "<h1>exercise-runner</h1><p class=\"muted\">Operators' dashboard</p>{}\
             <form method=\"post\" action=\"/dashboard/login\">\
             <label for=\"token\">Token</label>\
             <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required autofocus>\
             <p class=\"muted\">The runner's API token or its operator token (<code>RUNNER_OPERATOR_TOKEN</code>).</p>\
             <button type=\"submit\">Sign in</button></form>",
            error.unwrap_or_default()
        ),
    )
}

/// A short page for a browser that navigated somewhere it may not go.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    html(
        status,
        "Dashboard",
        &format!(
            "<h1>{}</h1><p>{}</p><p><code>{}</code></p><p><a href=\"/dashboard/\">Back to the dashboard</a></p>",
            escape(status.canonical_reason().unwrap_or("Error")),
            escape(message),
            escape(code)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pages_escape_what_they_show_and_run_no_script() {
        let resp = login(StatusCode::UNAUTHORIZED, Some("<script>alert(1)</script>"));
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let csp = resp.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().to_string();
        assert!(csp.starts_with("default-src 'none'") && !csp.contains("script-src"), "{csp}");
        assert_eq!(resp.headers()[header::X_FRAME_OPTIONS], "DENY");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && !text.contains("<script>"), "{text}");
        assert!(text.contains("name=\"token\"") && text.contains("method=\"post\""));
    }

    #[test]
    fn only_the_three_bundle_files_are_assets_and_the_app_may_not_be_framed() {
        assert!(asset("").is_some() && asset("app.js").is_some() && asset("app.css").is_some());
        for other in ["index.html", "api/me", "../app.js", "login"] {
            assert!(asset(other).is_none(), "{other}");
        }
        assert!(APP_CSP.contains("frame-ancestors 'none'") && APP_CSP.contains("script-src 'self'"));
        assert!(!APP_CSP.contains("unsafe"), "{APP_CSP}");
    }
}
