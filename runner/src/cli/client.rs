//! The HTTP side of the client commands: requests to the API, its errors as [`CliError`]s, and
//! logs streamed as they are written.

use std::{io::Write, time::Duration};

use serde_json::Value;

use super::{CliError, Target};

/// A JSON answer: the body as sent (what `--json` prints) and parsed.
pub struct Reply {
    pub text: String,
    pub value: Value,
}

pub struct Client {
    http: reqwest::Client,
    target: Target,
}

/// Requests that are not streams end within this (a session's end waits for its container).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

impl Client {
    pub fn new(target: Target) -> Result<Client, CliError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("runner-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Setup(format!("cannot make an HTTP client: {e}")))?;
        Ok(Client { http, target })
    }

    /// The URL of an API path; each segment is percent-encoded, so an id cannot reach another route.
    pub fn url(&self, segments: &[&str], query: &[(&str, String)]) -> reqwest::Url {
        let mut url = reqwest::Url::parse(&self.target.url).expect("the target URL was checked");
        url.path_segments_mut().expect("an http URL has a path").pop_if_empty().extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    fn unreachable(&self, e: &reqwest::Error) -> CliError {
        // reqwest's own text is "error sending request for url (...)"; the innermost cause is
        // what a person can act on ("Connection refused (os error 111)").
        let mut cause: &dyn std::error::Error = e;
        while let Some(inner) = cause.source() {
            cause = inner;
        }
        let cause = if e.is_timeout() { "no answer in time".to_string() } else { cause.to_string() };
        CliError::Unreachable {
            url: self.target.url.clone(),
            source: self.target.url_source.describe().to_string(),
            cause,
        }
    }

    /// Sends a request with the token; a response with an error status is a [`CliError::Api`].
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, CliError> {
        let r = req.bearer_auth(&self.target.token).send().await.map_err(|e| self.unreachable(&e))?;
        if r.status().is_success() {
            return Ok(r);
        }
        let status = r.status();
        let retry_after = r
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let body = r.text().await.unwrap_or_default();
        Err(CliError::from_response(status.as_u16(), status.canonical_reason().unwrap_or(""), retry_after, &body))
    }

    async fn json(&self, req: reqwest::RequestBuilder) -> Result<Reply, CliError> {
        let r = self.send(req.timeout(REQUEST_TIMEOUT)).await?;
        let text = r.text().await.map_err(|e| self.unreachable(&e))?;
        let value = serde_json::from_str(&text).map_err(|_| CliError::Api {
            status: 502,
            code: None,
            message: "the runner's answer is not JSON (is the URL the runner's?)".into(),
            request_id: None,
            retry_after: None,
        })?;
        Ok(Reply { text, value })
    }

    pub async fn get(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Reply, CliError> {
        self.json(self.http.get(self.url(segments, query))).await
    }

    pub async fn delete(&self, segments: &[&str]) -> Result<Reply, CliError> {
        self.json(self.http.delete(self.url(segments, &[]))).await
    }

    pub async fn post_json(&self, segments: &[&str], body: &Value) -> Result<Reply, CliError> {
        self.json(self.http.post(self.url(segments, &[])).json(body)).await
    }

    pub async fn post_tar(&self, segments: &[&str], tar: Vec<u8>) -> Result<Reply, CliError> {
        let req = self.http.post(self.url(segments, &[])).header(reqwest::header::CONTENT_TYPE, "application/x-tar");
        self.json(req.body(tar)).await
    }

    /// Opens a streamed text answer (a log, a command's output).
    pub async fn open_stream(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, CliError> {
        self.send(req).await
    }

    pub fn get_request(&self, segments: &[&str]) -> reqwest::RequestBuilder {
        self.http.get(self.url(segments, &[]))
    }

    pub fn post_request(&self, segments: &[&str], body: &Value) -> reqwest::RequestBuilder {
        self.http.post(self.url(segments, &[])).json(body)
    }

    /// Copies a streamed answer to `out` as it arrives (through `clean` when given); keeps the last
    /// bytes in `tail` (a command's `[exit N]`) and everything in `all` when asked.
    pub async fn copy_stream(
        &self,
        mut r: reqwest::Response,
        out: &mut dyn Write,
        clean: bool,
        mut all: Option<&mut Vec<u8>>,
    ) -> Result<String, CliError> {
        let mut tail = String::new();
        while let Some(chunk) = r.chunk().await.map_err(|e| self.unreachable(&e))? {
            let shown = if clean { clean_log(&chunk) } else { chunk.to_vec() };
            // A closed stdout (`| head`) stops the copy, not the command's outcome.
            let _ = out.write_all(&shown).and_then(|_| out.flush());
            if let Some(all) = all.as_deref_mut() {
                all.extend_from_slice(&chunk);
            }
            tail.push_str(&String::from_utf8_lossy(&chunk));
            if tail.len() > 4096 {
                let mut cut = tail.len() - 1024;
                while !tail.is_char_boundary(cut) {
                    cut += 1;
                }
                tail = tail.split_off(cut);
            }
        }
        Ok(tail)
    }
}

/// A build log as a terminal may show it: authors' `RUN` output cannot move the cursor, change
/// the title or recolour the operator's terminal. Tabs and newlines stay; a carriage return (a
/// progress bar) becomes a newline, unless a newline follows it.
pub fn clean_log(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\n' | b'\t' => out.push(b),
            b'\r' if bytes.get(i + 1) != Some(&b'\n') => out.push(b'\n'),
            0..=0x1f | 0x7f => {}
            _ => out.push(b),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_encoded_segment_by_segment() {
        let target = Target {
            url: "http://127.0.0.1:8080/prefix".into(),
            url_source: super::super::UrlSource::Given,
            token: "t".into(),
            token_source: super::super::TokenSource::Settings,
        };
        let c = Client::new(target).unwrap();
        assert_eq!(
            c.url(&["v1", "sessions", "../../metrics"], &[]).as_str(),
            "http://127.0.0.1:8080/prefix/v1/sessions/..%2F..%2Fmetrics"
        );
        assert_eq!(
            c.url(&["v1", "sessions"], &[("learner", "a b&c".into())]).as_str(),
            "http://127.0.0.1:8080/prefix/v1/sessions?learner=a+b%26c"
        );
    }

    #[test]
    fn build_logs_lose_terminal_controls() {
        assert_eq!(
            clean_log(b"\x1b[2J\x1b]0;owned\x07step 1\r\n\tok\x7f 10%\r20%"),
            b"[2J]0;ownedstep 1\n\tok 10%\n20%".to_vec()
        );
    }
}
