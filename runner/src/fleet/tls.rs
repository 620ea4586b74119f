//! TLS between the fleet's runners (docs/ARCHITECTURE.md, "Fleet"): with
//! `RUNNER_FLEET_TLS_CERT` and `RUNNER_FLEET_TLS_KEY` (one certificate and key for the whole
//! fleet, given as Swarm secrets), every runner serves relays on `RUNNER_FLEET_LISTEN` over TLS
//! with that certificate, and relays only to a runner that presents exactly it: the certificate
//! is pinned, so no CA, host name or address enters the decision, and a node that joins needs
//! nothing but the secrets. What a relay carries (bearer tokens, IDE cookies, keystrokes, files)
//! is then encrypted on the nodes' network; the HMAC signature still says who sent it.

use std::sync::Arc;

use anyhow::Context;
use tokio_rustls::rustls::{
    self,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{ring, CryptoProvider},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};

/// Set on every request that arrived on the fleet listener (over TLS): with TLS on, a signed
/// relay is accepted only there.
#[derive(Debug, Clone, Copy)]
pub struct ViaFleetListener;

/// Serves `router` on `listener` over TLS with `config` until `cancel` fires (upgrades, the IDE's
/// WebSockets, included). A handshake has 10 s.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: axum::Router,
    cancel: tokio_util::sync::CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let router = router.layer(axum::Extension(ViaFleetListener));
    loop {
        let tcp = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "the fleet listener could not accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "a TLS handshake on the fleet listener failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}

/// The fleet's certificate and key, parsed.
#[derive(Debug)]
pub struct FleetTls {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Clone for FleetTls {
    fn clone(&self) -> Self {
        FleetTls { cert: self.cert.clone(), key: self.key.clone_key() }
    }
}

impl FleetTls {
    /// Reads a PEM certificate (the first of the file) and its PEM private key.
    pub fn from_pem(cert: &str, key: &str) -> anyhow::Result<FleetTls> {
        let cert = rustls_pemfile::certs(&mut cert.as_bytes())
            .next()
            .context("RUNNER_FLEET_TLS_CERT holds no PEM certificate")?
            .context("RUNNER_FLEET_TLS_CERT is not a readable PEM certificate")?;
        let key = rustls_pemfile::private_key(&mut key.as_bytes())
            .context("RUNNER_FLEET_TLS_KEY is not a readable PEM private key")?
            .context("RUNNER_FLEET_TLS_KEY holds no PEM private key")?;
        let tls = FleetTls { cert, key };
        tls.server_config().context("RUNNER_FLEET_TLS_CERT and RUNNER_FLEET_TLS_KEY do not make a TLS server")?;
        Ok(tls)
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(ring::default_provider())
    }

    /// What this runner's fleet listener serves.
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let mut config = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// What this runner relays with: only the fleet's own certificate is accepted.
    pub fn client_config(&self) -> rustls::ClientConfig {
        pinned_client(self.cert.clone())
    }
}

/// (No ALPN set here: the relaying client's connector offers HTTP/1.1 itself.)
fn pinned_client(cert: CertificateDer<'static>) -> rustls::ClientConfig {
    let provider = FleetTls::provider();
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the provider's default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { cert, provider }))
        .with_no_client_auth()
}

/// A client config that accepts no server: for a fleet without TLS, whose URLs are `http://`.
pub fn no_tls_client() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(FleetTls::provider())
        .with_safe_default_protocol_versions()
        .expect("the provider's default protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// Accepts exactly one certificate, whatever name or address it was reached at; the handshake's
/// signatures are checked as usual (the peer must hold the key).
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the fleet's certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const CERT: &str = include_str!("testdata/fleet.crt");
    const KEY: &str = include_str!("testdata/fleet.key");
    const OTHER_CERT: &str = include_str!("testdata/other.crt");
    const OTHER_KEY: &str = include_str!("testdata/other.key");

    /// A TLS handshake over an in-memory pipe between a server with `server` and a client; what
    /// the client reads back.
    async fn talk(server: &FleetTls, client: rustls::ClientConfig) -> Result<String, String> {
        let (a, b) = tokio::io::duplex(4096);
        let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config().unwrap());
        let served = tokio::spawn(async move {
            let mut s = acceptor.accept(a).await.map_err(|e| e.to_string())?;
            s.write_all(b"hello from the fleet").await.map_err(|e| e.to_string())?;
            s.shutdown().await.map_err(|e| e.to_string())
        });
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = ServerName::try_from("10.124.0.12").unwrap();
        let mut c = connector.connect(name, b).await.map_err(|e| e.to_string())?;
        let mut got = String::new();
        c.read_to_string(&mut got).await.map_err(|e| e.to_string())?;
        let _ = served.await;
        Ok(got)
    }

    #[tokio::test]
    async fn a_runner_talks_only_to_a_runner_holding_the_fleets_certificate() {
        let fleet = FleetTls::from_pem(CERT, KEY).unwrap();
        let other = FleetTls::from_pem(OTHER_CERT, OTHER_KEY).unwrap();
        // Any address: the certificate is pinned, not its names.
        assert_eq!(talk(&fleet, fleet.client_config()).await.unwrap(), "hello from the fleet");
        let e = talk(&other, fleet.client_config()).await.unwrap_err();
        assert!(e.contains("not the fleet's certificate"), "{e}");
        assert!(talk(&fleet, no_tls_client()).await.is_err(), "a fleet without TLS trusts no server");
    }

    /// The whole relay path on loopback: a fleet listener serving routes over TLS, and the
    /// relaying client, pinned to the fleet's certificate or to another.
    #[tokio::test]
    async fn a_relay_travels_over_tls_to_the_fleet_listener_and_nowhere_else() {
        use axum::{body::Body, http::Request};
        let fleet = FleetTls::from_pem(CERT, KEY).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("https://{}", listener.local_addr().unwrap());
        let router = axum::Router::new().route(
            "/hi",
            axum::routing::get(|via: Option<axum::Extension<ViaFleetListener>>| async move {
                if via.is_some() {
                    "hello over the fleet listener"
                } else {
                    "hello"
                }
            }),
        );
        let cancel = tokio_util::sync::CancellationToken::new();
        let served = tokio::spawn(serve(listener, fleet.server_config().unwrap(), router, cancel.clone()));
        let relay = |tls: rustls::ClientConfig| {
            let base = base.clone();
            async move {
                let f = super::super::forward::Forwarder::new("secret", "node-a", tls);
                let req = Request::get("/hi").body(Body::empty()).unwrap();
                f.relay(&base, req, std::time::Duration::from_secs(10)).await
            }
        };
        let answer = relay(fleet.client_config()).await.unwrap();
        assert_eq!(answer.status(), 200);
        let body = axum::body::to_bytes(answer.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"hello over the fleet listener");
        let other = FleetTls::from_pem(OTHER_CERT, OTHER_KEY).unwrap();
        assert!(relay(other.client_config()).await.is_err(), "a runner pinned to another certificate");
        assert!(relay(no_tls_client()).await.is_err());
        cancel.cancel();
        served.await.unwrap();
    }

    #[test]
    fn the_certificate_and_key_must_be_pem_and_belong_together() {
        assert!(FleetTls::from_pem("", KEY).is_err());
        assert!(FleetTls::from_pem(CERT, "not a key").is_err());
        let e = FleetTls::from_pem(CERT, OTHER_KEY).unwrap_err();
        assert!(format!("{e:#}").contains("do not make a TLS server"), "{e:#}");
    }
}
