//! Requests one runner hands to another: signed with the fleet secret, relayed as they are
//! (headers, streamed bodies, WebSocket and other upgrades), the answer relayed back.
//!
//! The signature is HMAC-SHA256 over the sender's node, a Unix time, the method and the path
//! (`x-runner-fleet: v1;from=<node>;ts=<secs>;sig=<hex>`): the receiver knows the request came
//! from a runner of the fleet, and that it is recent (±120 s); it never forwards such a request
//! again. The bearer token or IDE cookie the client sent travels with it, and the receiver
//! checks it as it checks its own clients'.

use std::time::Duration;

use axum::{
    body::Body,
    http::{header, HeaderName, HeaderValue, Request, Response, StatusCode, Uri},
};
use hmac::{Hmac, Mac};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use sha2::Sha256;

pub const HEADER: &str = "x-runner-fleet";
/// How far a signed request's time may be from the receiver's clock.
const SKEW_SECS: i64 = 120;

/// Hop-by-hop headers (RFC 9110, 7.6.1): never relayed, except `upgrade`/`connection` on an upgrade.
const HOP_BY_HOP: [&str; 7] =
    ["connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding"];

fn mac(secret: &str, from: &str, ts: i64, method: &str, path: &str) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    m.update(format!("v1\n{from}\n{ts}\n{method}\n{path}").as_bytes());
    hex::encode(m.finalize().into_bytes())
}

/// The header value signing a request of `from`'s runner.
pub fn sign(secret: &str, from: &str, now_secs: i64, method: &str, path: &str) -> String {
    format!("v1;from={from};ts={now_secs};sig={}", mac(secret, from, now_secs, method, path))
}

/// The sender's node when the signature holds.
pub fn verify(secret: &str, value: &str, now_secs: i64, method: &str, path: &str) -> Result<String, &'static str> {
    let mut parts = value.split(';');
    if parts.next() != Some("v1") {
        return Err("unknown signature version");
    }
    let (mut from, mut ts, mut sig) = (None, None, None);
    for p in parts {
        match p.split_once('=') {
            Some(("from", v)) => from = Some(v),
            Some(("ts", v)) => ts = v.parse::<i64>().ok(),
            Some(("sig", v)) => sig = Some(v),
            _ => return Err("malformed signature"),
        }
    }
    let (Some(from), Some(ts), Some(sig)) = (from, ts, sig) else { return Err("malformed signature") };
    if (now_secs - ts).abs() > SKEW_SECS {
        return Err("signature too old or from the future");
    }
    let expected = mac(secret, from, ts, method, path);
    let same =
        expected.len() == sig.len() && expected.bytes().zip(sig.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if same {
        Ok(from.to_string())
    } else {
        Err("bad signature")
    }
}

/// Relays requests to other runners of the fleet.
pub struct Forwarder {
    client: Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Body>,
    secret: String,
    from: String,
}

/// Why a relay failed before the other runner answered.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("the runner at {0} did not answer: {1}")]
    Unreachable(String, String),
    #[error("the runner at {0} did not answer within {1:?}")]
    Timeout(String, Duration),
    #[error("{0}")]
    Invalid(String),
}

impl Forwarder {
    /// Relays signed with `secret` as node `from`; `https://` runners are reached with `tls`
    /// (`fleet::tls`: the fleet's pinned certificate).
    pub fn new(secret: &str, from: &str, tls: tokio_rustls::rustls::ClientConfig) -> Forwarder {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(3)));
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(https);
        Forwarder { client, secret: secret.to_string(), from: from.to_string() }
    }

    /// Relays `req` to the runner at `base` (`http://host:port`) and returns its answer; an
    /// upgrade (the IDE's WebSockets) is spliced through once both sides switch protocols.
    /// `timeout` bounds the wait for the answer's head, not a streamed body or an upgraded stream.
    pub async fn relay(
        &self,
        base: &str,
        mut req: Request<Body>,
        timeout: Duration,
    ) -> Result<Response<Body>, ForwardError> {
        let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
        let uri: Uri =
            format!("{base}{path}").parse().map_err(|e| ForwardError::Invalid(format!("{base}{path}: {e}")))?;
        let upgrade = req.headers().contains_key(header::UPGRADE);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        for h in HOP_BY_HOP {
            if !(upgrade && h == "connection") {
                parts.headers.remove(HeaderName::from_static(h));
            }
        }
        if !upgrade {
            parts.headers.remove(header::UPGRADE);
        }
        let now = chrono::Utc::now().timestamp();
        let signature = sign(&self.secret, &self.from, now, parts.method.as_str(), &path);
        parts.headers.insert(
            HeaderName::from_static(HEADER),
            HeaderValue::from_str(&signature).map_err(|e| ForwardError::Invalid(e.to_string()))?,
        );
        parts.uri = uri;
        let upstream = Request::from_parts(parts, body);
        let mut response = match tokio::time::timeout(timeout, self.client.request(upstream)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(ForwardError::Unreachable(base.to_string(), e.to_string())),
            Err(_) => return Err(ForwardError::Timeout(base.to_string(), timeout)),
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let server_upgrade = hyper::upgrade::on(&mut response);
                tokio::spawn(async move {
                    let (Ok(client), Ok(server)) = (client_upgrade.await, server_upgrade.await) else { return };
                    let mut client = hyper_util::rt::TokioIo::new(client);
                    let mut server = hyper_util::rt::TokioIo::new(server);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
            let (parts, _) = response.into_parts();
            return Ok(Response::from_parts(parts, Body::empty()));
        }
        let (mut parts, body) = response.into_parts();
        for h in HOP_BY_HOP {
            parts.headers.remove(HeaderName::from_static(h));
        }
        parts.headers.remove(header::UPGRADE);
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_holds_for_its_request_only() {
        let v = sign("s3cret", "node-a", 1000, "POST", "/v1/sessions");
        assert_eq!(verify("s3cret", &v, 1000, "POST", "/v1/sessions"), Ok("node-a".into()));
        assert_eq!(verify("s3cret", &v, 1100, "POST", "/v1/sessions"), Ok("node-a".into()), "within the skew");
        assert_eq!(verify("other", &v, 1000, "POST", "/v1/sessions"), Err("bad signature"));
        assert_eq!(verify("s3cret", &v, 1000, "DELETE", "/v1/sessions"), Err("bad signature"));
        assert_eq!(verify("s3cret", &v, 1000, "POST", "/v1/sessions?x=1"), Err("bad signature"));
        assert_eq!(verify("s3cret", &v, 1200, "POST", "/v1/sessions"), Err("signature too old or from the future"));
        let forged = v.replace("from=node-a", "from=node-b");
        assert_eq!(verify("s3cret", &forged, 1000, "POST", "/v1/sessions"), Err("bad signature"));
        assert_eq!(verify("s3cret", "v1;from=a", 1000, "GET", "/"), Err("malformed signature"));
        assert_eq!(verify("s3cret", "v2;from=a;ts=1;sig=00", 1000, "GET", "/"), Err("unknown signature version"));
    }
}
