//! Terminals on real PTYs that outlive the browser: output is kept in a scrollback buffer and
//! replayed when a page (re)attaches, so a reload shows what happened before.

use std::{
    collections::{BTreeMap, VecDeque},
    path::Path,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::{broadcast, watch},
};

pub const MAX_TERMINALS: usize = 8;
const SCROLLBACK_BYTES: usize = 256 * 1024;

pub struct Terminal {
    pub id: String,
    writer: tokio::sync::Mutex<pty_process::OwnedWritePty>,
    output: Mutex<Output>,
    exited: watch::Sender<bool>,
}

struct Output {
    scrollback: VecDeque<u8>,
    tx: broadcast::Sender<Bytes>,
}

/// What a newly attached client gets: everything so far, and what comes next.
pub struct Attachment {
    pub replay: Bytes,
    pub live: broadcast::Receiver<Bytes>,
    pub exited: watch::Receiver<bool>,
}

impl Terminal {
    pub fn attach(&self) -> Attachment {
        let out = self.output.lock().expect("lock");
        let replay = Bytes::from(out.scrollback.iter().copied().collect::<Vec<u8>>());
        Attachment { replay, live: out.tx.subscribe(), exited: self.exited.subscribe() }
    }

    pub async fn input(&self, data: &[u8]) -> std::io::Result<()> {
        let mut w = self.writer.lock().await;
        w.write_all(data).await?;
        w.flush().await
    }

    pub async fn resize(&self, cols: u16, rows: u16) {
        let w = self.writer.lock().await;
        let _ = w.resize(pty_process::Size::new(rows.clamp(2, 500), cols.clamp(2, 1000)));
    }

    pub fn has_exited(&self) -> bool {
        *self.exited.borrow()
    }
}

/// Starts a login shell with the PTY as its controlling terminal. util-linux `setsid --ctty` makes
/// the new session and takes the terminal; pty-process's own hook for that aborts under this
/// gVisor (its `setsid` result fails a pid assertion), and `unsafe` is not used in this workspace.
fn spawn_on(pts: &pty_process::Pts, shell: &str, root: &Path) -> anyhow::Result<tokio::process::Child> {
    use std::os::fd::AsFd;
    let fd = || -> std::io::Result<std::process::Stdio> { Ok(pts.as_fd().try_clone_to_owned()?.into()) };
    if Path::new("/usr/bin/setsid").exists() {
        return Ok(tokio::process::Command::new("/usr/bin/setsid")
            .args(["--ctty", shell, "-l"])
            .current_dir(root)
            .env("TERM", "xterm-256color")
            .stdin(fd()?)
            .stdout(fd()?)
            .stderr(fd()?)
            .kill_on_drop(true)
            .spawn()?);
    }
    Ok(pty_process::Command::new(shell)
        .arg("-l")
        .current_dir(root)
        .env("TERM", "xterm-256color")
        .kill_on_drop(true)
        .spawn_borrowed(pts)?)
}

#[derive(Default)]
pub struct Terminals {
    inner: Mutex<(u32, BTreeMap<String, Arc<Terminal>>)>,
}

impl Terminals {
    pub fn list(&self) -> Vec<String> {
        let inner = self.inner.lock().expect("lock");
        inner.1.values().filter(|t| !t.has_exited()).map(|t| t.id.clone()).collect()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Terminal>> {
        self.inner.lock().expect("lock").1.get(id).cloned()
    }

    /// Starts a login shell on a new PTY in `root`.
    pub fn create(&self, root: &Path) -> anyhow::Result<Arc<Terminal>> {
        let mut inner = self.inner.lock().expect("lock");
        inner.1.retain(|_, t| !t.has_exited());
        if inner.1.len() >= MAX_TERMINALS {
            anyhow::bail!("at most {MAX_TERMINALS} terminals");
        }
        inner.0 += 1;
        let id = inner.0.to_string();
        let (pty, pts) = pty_process::open()?;
        pty.resize(pty_process::Size::new(24, 80))?;
        let shell = if Path::new("/bin/bash").exists() { "/bin/bash" } else { "/bin/sh" };
        let mut child = spawn_on(&pts, shell, root)?;
        drop(pts);
        let (mut reader, writer) = pty.into_split();
        let (tx, _) = broadcast::channel(256);
        let (exited, _) = watch::channel(false);
        let term = Arc::new(Terminal {
            id: id.clone(),
            writer: tokio::sync::Mutex::new(writer),
            output: Mutex::new(Output { scrollback: VecDeque::new(), tx }),
            exited,
        });
        inner.1.insert(id, term.clone());
        let t = term.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut out = t.output.lock().expect("lock");
                        out.scrollback.extend(&buf[..n]);
                        let excess = out.scrollback.len().saturating_sub(SCROLLBACK_BYTES);
                        if excess > 0 {
                            // Cut at a line start, not inside a UTF-8 character or escape sequence.
                            let cut = out
                                .scrollback
                                .iter()
                                .skip(excess)
                                .position(|b| *b == b'\n')
                                .map_or(excess, |p| excess + p + 1);
                            out.scrollback.drain(..cut);
                        }
                        let _ = out.tx.send(Bytes::copy_from_slice(&buf[..n]));
                    }
                }
            }
            let _ = child.wait().await;
            let _ = t.exited.send(true);
        });
        Ok(term)
    }
}
