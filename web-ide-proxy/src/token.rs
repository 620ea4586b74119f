//! Signed, expiring tokens bound to one session: `<kind>.<expiry>.<hmac>`, where the HMAC-SHA256
//! covers the kind, the session id and the expiry. A token for another session, a tampered one
//! and an expired one all fail to verify.

use hmac::{Hmac, Mac};
use sha2::Sha256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Short-lived, carried in the `ide_url` the web app embeds.
    Url,
    /// Longer-lived, in the HttpOnly cookie the proxy sets in exchange.
    Cookie,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::Url => "u",
            Kind::Cookie => "c",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    BadSignature,
    Expired,
}

fn mac(secret: &[u8], kind: Kind, session: &str, exp: u64) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(format!("{}.{session}.{exp}", kind.tag()).as_bytes());
    m
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub fn sign(secret: &[u8], kind: Kind, session: &str, exp: u64) -> String {
    let sig = hex::encode(mac(secret, kind, session, exp).finalize().into_bytes());
    format!("{}.{exp}.{sig}", kind.tag())
}

pub fn verify(secret: &[u8], token: &str, kind: Kind, session: &str, now: u64) -> Result<(), TokenError> {
    let mut parts = token.splitn(3, '.');
    let (Some(tag), Some(exp), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed);
    };
    let exp: u64 = exp.parse().map_err(|_| TokenError::Malformed)?;
    let sig = hex::decode(sig).map_err(|_| TokenError::Malformed)?;
    if tag != kind.tag() {
        return Err(TokenError::BadSignature);
    }
    mac(secret, kind, session, exp).verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
    if now > exp {
        return Err(TokenError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_kind_session_and_expiry() {
        let s = b"secret";
        let t = sign(s, Kind::Url, "a", 100);
        assert_eq!(verify(s, &t, Kind::Url, "a", 99), Ok(()));
        assert_eq!(verify(s, &t, Kind::Url, "b", 99), Err(TokenError::BadSignature));
        assert_eq!(verify(s, &t, Kind::Cookie, "a", 99), Err(TokenError::BadSignature));
        assert_eq!(verify(b"other", &t, Kind::Url, "a", 99), Err(TokenError::BadSignature));
        assert_eq!(verify(s, &t, Kind::Url, "a", 101), Err(TokenError::Expired));
        let tampered = t.replace(".100.", ".999.");
        assert_eq!(verify(s, &tampered, Kind::Url, "a", 99), Err(TokenError::BadSignature));
        assert_eq!(verify(s, "garbage", Kind::Url, "a", 99), Err(TokenError::Malformed));
    }
}
