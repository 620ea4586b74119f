//! Signing in to the dashboard: the cookie, its CSRF token, and the same-origin rule for
//! requests that change something. Pure functions of their inputs, so every rule is a unit test.
//!
//! - The cookie is `v1.<credential>.<expiry>.<nonce>.<hmac>`: which credential signed in (`api` or
//!   `operator`, never the token), when it expires, a random nonce. The HMAC-SHA256 key is derived
//!   from the IDE secret *and a digest of that credential*: the IDE's own tokens never verify here,
//!   and rotating a token signs out every cookie it made.
//! - The CSRF token is an HMAC of the nonce under the same key: the page reads it from
//!   `GET /dashboard/api/me` (a cross-site page cannot read that answer) and sends it in
//!   `X-CSRF-Token` with every action.
//! - An action must also come from the dashboard's own origin (`Origin`, `Sec-Fetch-Site`): a
//!   page on another port of the same host is same-site, so `SameSite=Strict` alone would still
//!   send it the cookie.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use axum::http::{header, HeaderMap};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::super::middleware::{constant_time_eq, Actor};

/// How long a sign-in lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// The cookie over plain http, and over https (the `__Host-` prefix makes the browser insist on
/// `Secure`, `Path=/` and no `Domain`: no sibling host can plant or shadow it).
pub const COOKIE: &str = "runner_dashboard";
pub const SECURE_COOKIE: &str = "__Host-runner_dashboard";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Signed-out nonces kept until they expire; past this many the oldest are forgotten.
const MAX_REVOKED: usize = 10_000;

/// Which credential signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Api,
    Operator,
}

impl Credential {
    fn tag(self) -> &'static str {
        match self {
            Credential::Api => "api",
            Credential::Operator => "operator",
        }
    }

    /// The name the audit log gives it.
    pub fn actor(self) -> Actor {
        match self {
            Credential::Api => Actor("api-token"),
            Credential::Operator => Actor("operator-token"),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum CookieError {
    Malformed,
    BadSignature,
    Expired,
    SignedOut,
}

/// What a valid cookie says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    pub credential: Credential,
    /// Unix seconds.
    pub expires: u64,
    nonce: String,
}

struct Key {
    mac: [u8; 32],
    token: Vec<u8>,
    /// The per-token rate limit's key, as `middleware::require_token` computes it.
    rate_key: String,
}

impl Key {
    fn new(ide_secret: &[u8], token: &str) -> Key {
        let mut m = Hmac::<Sha256>::new_from_slice(ide_secret).expect("HMAC takes any key length");
        m.update(b"exercise-runner dashboard cookie v1\0");
        m.update(&Sha256::digest(token.as_bytes()));
        Key {
            mac: m.finalize().into_bytes().into(),
            token: token.as_bytes().to_vec(),
            rate_key: hex::encode(&Sha256::digest(token.as_bytes())[..8]),
        }
    }

    fn hmac(&self, parts: &[&str]) -> Hmac<Sha256> {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.mac).expect("HMAC takes any key length");
        m.update(parts.join(".").as_bytes());
        m
    }
}

/// Signs and verifies dashboard cookies and their CSRF tokens; remembers sign-outs.
pub struct Signer {
    api: Key,
    operator: Option<Key>,
    revoked: Mutex<HashMap<String, u64>>,
}

impl Signer {
    pub fn new(ide_secret: &[u8], api_token: &str, operator_token: Option<&str>) -> Signer {
        Signer {
            api: Key::new(ide_secret, api_token),
            operator: operator_token.map(|t| Key::new(ide_secret, t)),
            revoked: Mutex::new(HashMap::new()),
        }
    }

    fn key(&self, c: Credential) -> Option<&Key> {
        match c {
            Credential::Api => Some(&self.api),
            Credential::Operator => self.operator.as_ref(),
        }
    }

    /// Which credential `presented` is, compared in constant time (both are always compared).
    pub fn credential_of(&self, presented: &str) -> Option<Credential> {
        let presented = presented.trim().as_bytes();
        let api = constant_time_eq(presented, &self.api.token);
        let operator = self.operator.as_ref().is_some_and(|k| constant_time_eq(presented, &k.token));
        match (api, operator) {
            (true, _) => Some(Credential::Api),
            (false, true) => Some(Credential::Operator),
            _ => None,
        }
    }

    /// A fresh cookie value for a sign-in with `c` at `now` (unix seconds).
    pub fn sign(&self, c: Credential, now: u64) -> String {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        self.sign_with(c, now + SESSION_TTL.as_secs(), &nonce)
    }

    fn sign_with(&self, c: Credential, expires: u64, nonce: &str) -> String {
        let key = self.key(c).expect("only configured credentials sign in");
        let exp = expires.to_string();
        let sig = hex::encode(key.hmac(&["v1", c.tag(), &exp, nonce]).finalize().into_bytes());
        format!("v1.{}.{exp}.{nonce}.{sig}", c.tag())
    }

    pub fn verify(&self, value: &str, now: u64) -> Result<SignedIn, CookieError> {
        let parts: Vec<&str> = value.split('.').collect();
        let [version, tag, exp, nonce, sig] = parts[..] else { return Err(CookieError::Malformed) };
        let credential = match tag {
            "api" => Credential::Api,
            "operator" => Credential::Operator,
            _ => return Err(CookieError::Malformed),
        };
        let expires: u64 = exp.parse().map_err(|_| CookieError::Malformed)?;
        let sig = hex::decode(sig).map_err(|_| CookieError::Malformed)?;
        if version != "v1" || nonce.len() != 32 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CookieError::Malformed);
        }
        // A cookie of the operator token when none is configured (any more) cannot verify.
        let key = self.key(credential).ok_or(CookieError::BadSignature)?;
        key.hmac(&[version, tag, exp, nonce]).verify_slice(&sig).map_err(|_| CookieError::BadSignature)?;
        if now >= expires {
            return Err(CookieError::Expired);
        }
        if self.revoked.lock().expect("lock").contains_key(nonce) {
            return Err(CookieError::SignedOut);
        }
        Ok(SignedIn { credential, expires, nonce: nonce.to_string() })
    }

    /// The CSRF token of a sign-in: bound to its nonce and its credential's key.
    pub fn csrf_token(&self, s: &SignedIn) -> String {
        let key = self.key(s.credential).expect("a verified sign-in has a key");
        hex::encode(key.hmac(&["csrf", &s.nonce, &s.expires.to_string()]).finalize().into_bytes())
    }

    pub fn csrf_ok(&self, s: &SignedIn, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| constant_time_eq(p.trim().as_bytes(), self.csrf_token(s).as_bytes()))
    }

    /// Signs a cookie out: it stops verifying here before it expires.
    pub fn revoke(&self, s: &SignedIn, now: u64) {
        let mut revoked = self.revoked.lock().expect("lock");
        revoked.retain(|_, exp| *exp > now);
        if revoked.len() >= MAX_REVOKED {
            if let Some(oldest) = revoked.iter().min_by_key(|(_, exp)| **exp).map(|(n, _)| n.clone()) {
                revoked.remove(&oldest);
            }
        }
        revoked.insert(s.nonce.clone(), s.expires);
    }

    pub fn rate_key(&self, c: Credential) -> &str {
        &self.key(c).expect("a verified sign-in has a key").rate_key
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// The `Set-Cookie` value of a sign-in (or, with `None`, of a sign-out).
pub fn set_cookie(value: Option<&str>, secure: bool) -> String {
    let name = if secure { SECURE_COOKIE } else { COOKIE };
    let secure = if secure { "; Secure" } else { "" };
    match value {
        Some(v) => format!("{name}={v}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}", SESSION_TTL.as_secs()),
        None => format!("{name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

/// `scheme://host[:port]` of a URL such as `RUNNER_PUBLIC_URL`.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    (!authority.is_empty() && matches!(scheme, "http" | "https"))
        .then(|| format!("{}://{}", scheme.to_ascii_lowercase(), authority.to_ascii_lowercase()))
}

/// Whether a request that changes something comes from the dashboard's own origin. Browsers
/// send `Sec-Fetch-Site` and `Origin` with such requests: the first must say `same-origin`, the
/// second must be `public_origin` or the request's own `Host`; a request with neither is not
/// from a browser's same-origin page and is refused too (tools use `/v1` and the bearer token).
pub fn same_origin(headers: &HeaderMap, public_origin: Option<&str>) -> Result<(), &'static str> {
    let get = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{0}"));
    let fetch_site = get("sec-fetch-site");
    let origin = get(header::ORIGIN.as_str());
    if fetch_site.is_none() && origin.is_none() {
        return Err("the request has neither Origin nor Sec-Fetch-Site");
    }
    if let Some(site) = fetch_site {
        if !site.eq_ignore_ascii_case("same-origin") {
            return Err("Sec-Fetch-Site is not same-origin");
        }
    }
    if let Some(origin) = origin {
        let origin = origin.trim().to_ascii_lowercase();
        let host = get(header::HOST.as_str()).map(|h| h.trim().to_ascii_lowercase());
        let authority = origin.split_once("://").filter(|(s, _)| matches!(*s, "http" | "https")).map(|(_, a)| a);
        let by_host = authority.is_some_and(|a| Some(a) == host.as_deref());
        let by_public = public_origin.is_some_and(|p| p.eq_ignore_ascii_case(&origin));
        if !(by_host || by_public) {
            return Err("Origin is not this dashboard's");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const NOW: u64 = 1_800_000_000;

    fn signer() -> Signer {
        Signer::new(b"ide-secret", "api-token-0123456789", Some("operator-token-0123456789"))
    }

    #[test]
    fn a_cookie_names_its_credential_and_verifies_until_it_expires() {
        let s = signer();
        assert_eq!(s.credential_of(" api-token-0123456789 "), Some(Credential::Api));
        assert_eq!(s.credential_of("operator-token-0123456789"), Some(Credential::Operator));
        assert_eq!(s.credential_of("operator-token-012345678"), None);
        assert_eq!(s.credential_of(""), None);

        let c = s.sign(Credential::Operator, NOW);
        assert!(!c.contains("token"), "the cookie never carries the token: {c}");
        let signed = s.verify(&c, NOW).unwrap();
        assert_eq!(signed.credential, Credential::Operator);
        assert_eq!(signed.credential.actor().0, "operator-token");
        assert_eq!(signed.expires, NOW + SESSION_TTL.as_secs());
        assert_eq!(s.verify(&c, NOW + SESSION_TTL.as_secs()), Err(CookieError::Expired));
        assert_eq!(s.verify(&s.sign(Credential::Api, NOW), NOW).unwrap().credential.actor().0, "api-token");
    }

    #[test]
    fn tampered_foreign_and_stale_cookies_do_not_verify() {
        let s = signer();
        let c = s.sign(Credential::Api, NOW);
        let parts: Vec<&str> = c.split('.').collect();
        // Claiming the other credential, a later expiry, another nonce: the signature breaks.
        let as_operator = c.replacen(".api.", ".operator.", 1);
        assert_eq!(s.verify(&as_operator, NOW), Err(CookieError::BadSignature));
        let later = c.replacen(parts[2], &(NOW + 999_999).to_string(), 1);
        assert_eq!(s.verify(&later, NOW), Err(CookieError::BadSignature));
        let other_nonce = c.replacen(parts[3], &"0".repeat(32), 1);
        assert_eq!(s.verify(&other_nonce, NOW), Err(CookieError::BadSignature));
        for bad in ["", "v1", "v1.api.1.2", "v2.api.1900000000.00000000000000000000000000000000.00", "v1.root.1.x.y"] {
            assert_eq!(s.verify(bad, NOW), Err(CookieError::Malformed), "{bad:?}");
        }
        // Another runner's IDE secret, a rotated API token, an operator token no longer set.
        assert_eq!(Signer::new(b"other", "api-token-0123456789", None).verify(&c, NOW), Err(CookieError::BadSignature));
        assert_eq!(
            Signer::new(b"ide-secret", "rotated-token-000000", None).verify(&c, NOW),
            Err(CookieError::BadSignature)
        );
        let op = s.sign(Credential::Operator, NOW);
        assert_eq!(
            Signer::new(b"ide-secret", "api-token-0123456789", None).verify(&op, NOW),
            Err(CookieError::BadSignature)
        );
        // An IDE cookie signed with the IDE secret itself is not a dashboard cookie.
        let ide = web_ide_proxy::token::sign(b"ide-secret", web_ide_proxy::token::Kind::Cookie, "api", NOW + 60);
        assert!(s.verify(&ide, NOW).is_err());
    }

    #[test]
    fn a_signed_out_cookie_stops_verifying_and_others_do_not() {
        let s = signer();
        let (a, b) = (s.sign(Credential::Api, NOW), s.sign(Credential::Api, NOW));
        s.revoke(&s.verify(&a, NOW).unwrap(), NOW);
        assert_eq!(s.verify(&a, NOW), Err(CookieError::SignedOut));
        assert!(s.verify(&b, NOW).is_ok());
    }

    #[test]
    fn the_csrf_token_belongs_to_one_sign_in() {
        let s = signer();
        let one = s.verify(&s.sign(Credential::Operator, NOW), NOW).unwrap();
        let two = s.verify(&s.sign(Credential::Operator, NOW), NOW).unwrap();
        let token = s.csrf_token(&one);
        assert!(s.csrf_ok(&one, Some(&token)));
        assert!(!s.csrf_ok(&two, Some(&token)), "another sign-in's token");
        assert!(!s.csrf_ok(&one, None));
        assert!(!s.csrf_ok(&one, Some("")));
        assert!(!s.csrf_ok(&one, Some(&token[..20])));
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_over_https() {
        let plain = set_cookie(Some("v"), false);
        assert_eq!(plain, format!("runner_dashboard=v; Path=/; HttpOnly; SameSite=Strict; Max-Age={}", 8 * 3600));
        let secure = set_cookie(Some("v"), true);
        assert!(
            secure.starts_with("__Host-runner_dashboard=v; Path=/; HttpOnly; SameSite=Strict")
                && secure.ends_with("; Secure")
        );
        assert!(set_cookie(None, false).contains("Max-Age=0"));

        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; runner_dashboard=v1.x ; b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("__Host-runner_dashboard=v1.y"));
        assert_eq!(cookie(&h, COOKIE), Some("v1.x"));
        assert_eq!(cookie(&h, SECURE_COOKIE), Some("v1.y"));
        assert_eq!(cookie(&h, "runner"), None);
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_requests_from_the_dashboards_own_origin_may_act() {
        let public = origin_of("https://runner.example.com/some/path");
        assert_eq!(public.as_deref(), Some("https://runner.example.com"));
        let public = public.as_deref();
        let ok = [
            headers(&[
                ("host", "127.0.0.1:8080"),
                ("origin", "http://127.0.0.1:8080"),
                ("sec-fetch-site", "same-origin"),
            ]),
            headers(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080")]),
            headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "same-origin")]),
            // Behind a proxy that rewrites Host: the public URL's origin.
            headers(&[("host", "10.0.0.5:8080"), ("origin", "https://runner.example.com")]),
        ];
        for h in &ok {
            assert_eq!(same_origin(h, public), Ok(()), "{h:?}");
        }
        let refused = [
            // Another port of the same host is same-site, not same-origin.
            headers(&[
                ("host", "127.0.0.1:8080"),
                ("origin", "http://127.0.0.1:9999"),
                ("sec-fetch-site", "same-site"),
            ]),
            headers(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:9999")]),
            headers(&[("host", "127.0.0.1:8080"), ("origin", "http://evil.test"), ("sec-fetch-site", "cross-site")]),
            headers(&[
                ("host", "127.0.0.1:8080"),
                ("origin", "http://127.0.0.1:8080"),
                ("sec-fetch-site", "cross-site"),
            ]),
            headers(&[("host", "127.0.0.1:8080"), ("origin", "null")]),
            headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "none")]),
            headers(&[("host", "runner.example.com"), ("origin", "https://runner.example.com.evil.test")]),
            headers(&[("host", "127.0.0.1:8080")]),
        ];
        for h in &refused {
            assert!(same_origin(h, public).is_err(), "{h:?}");
        }
    }
}
