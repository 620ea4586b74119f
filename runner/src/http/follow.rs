//! Following a log file over HTTP: what is there, then what gets written, until its writer is done.

use std::{future::Future, path::PathBuf, time::Duration};

use axum::{
    body::{Body, Bytes},
    http::header,
    response::{IntoResponse, Response},
};

async fn read_from(path: &std::path::Path, offset: u64) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let Ok(mut f) = tokio::fs::File::open(path).await else { return vec![] };
    if f.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
        return vec![];
    }
    let mut buf = Vec::new();
    let _ = f.take(256 * 1024).read_to_end(&mut buf).await;
    buf
}

/// Streams `path` as text/plain while `active()` says its writer is still at work (polling), then
/// ends after a last read. Gives up after `give_up`.
pub fn follow_file<F, Fut>(path: PathBuf, give_up: Duration, active: F) -> Response
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let deadline = tokio::time::Instant::now() + give_up;
    let state = (path, 0u64, false, active);
    let stream = futures_util::stream::unfold(state, move |(path, mut offset, done, active)| async move {
        if done {
            return None;
        }
        loop {
            let chunk = read_from(&path, offset).await;
            if !chunk.is_empty() {
                offset += chunk.len() as u64;
                return Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), (path, offset, false, active)));
            }
            if !active().await {
                // The writer writes its last lines before it reports being done.
                let rest = read_from(&path, offset).await;
                if rest.is_empty() {
                    return None;
                }
                offset += rest.len() as u64;
                return Some((Ok(Bytes::from(rest)), (path, offset, true, active)));
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], Body::from_stream(stream)).into_response()
}
