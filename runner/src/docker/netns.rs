//! A stream into a sandbox's own network namespace, without an exec: the namespace is entered
//! the way Kubernetes' CRI port-forward enters a pod's (`setns` on the file the engine keeps for
//! it), on a thread of its own that ends right after, and an abstract Unix socket is connected
//! there. Under runc (and crun) the sandbox's processes live in that namespace; under gVisor the
//! sandbox has a network stack of its own inside the sandbox kernel, so nothing of it is there.
//!
//! Invariant 4 holds: no file of the sandbox is opened or followed. The namespace file is the
//! engine's (`NetworkSettings.SandboxKey`, under the engine's own run directory), opened without
//! following symlinks; an abstract socket has no file at all; the connect is non-blocking, so a
//! learner's listener that never accepts cannot hold the thread; and the namespace's only way
//! out is its loopback (sandboxes have no capability to change its routes). The socket's peer is
//! learner-controlled, like the agent's file socket: the proxy trusts nothing it says.

use std::{os::fd::AsFd, path::Path};

use anyhow::Context;
use rustix::{
    fs::{Mode, OFlags},
    net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType},
    thread::LinkNameSpaceType,
};

/// Runtimes whose containers are kernel namespaces on this host: a process in the container is
/// in the namespace the engine names.
pub(super) fn runtime_shares_host_kernel(runtime: &str) -> bool {
    matches!(runtime, "runc" | "crun" | "io.containerd.runc.v2")
}

/// Connects to the abstract Unix socket `name` inside the network namespace at `netns` (an
/// nsfs file of the engine's). Blocking for a moment: call it off the async threads.
fn connect_in(netns: &Path, name: &str) -> std::io::Result<std::os::unix::net::UnixStream> {
    let ns = rustix::fs::open(netns, OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW, Mode::empty())?;
    // Refused unless the file is a network namespace.
    rustix::thread::move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    // A Unix stream connect completes at once or fails (`EAGAIN` on a full backlog): it never
    // waits for the listener.
    rustix::net::connect(&fd, &SocketAddrUnix::new_abstract_name(name.as_bytes())?)?;
    Ok(std::os::unix::net::UnixStream::from(fd))
}

/// [`connect_in`] on a fresh thread: `setns` moves only the calling thread, and this one ends
/// with the connect, so no thread of the runner's is ever left in a sandbox's namespace.
pub(super) async fn connect(netns: &Path, name: &str) -> anyhow::Result<tokio::net::UnixStream> {
    anyhow::ensure!(netns.is_absolute(), "the engine named no network namespace for this container");
    let (path, name_owned) = (netns.to_path_buf(), name.to_string());
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns-connect".into())
        .spawn(move || {
            let _ = tx.send(connect_in(&path, &name_owned));
        })
        .context("starting the namespace thread")?;
    let stream = rx.await.context("the namespace thread ended")?.with_context(|| {
        format!("connecting to @{name} in the network namespace {}", netns.display())
    })?;
    // Already non-blocking.
    Ok(tokio::net::UnixStream::from_std(stream)?)
}
