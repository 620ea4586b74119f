//! A stream into a sandbox's own network namespace, without an exec: the namespace is entered
//! the way Kubernetes' CRI port-forward enters a pod's (`setns` into the namespace of the
//! container's process), on a thread of its own that ends right after, and an abstract Unix
//! socket is connected there. Under runc (and crun) the sandbox's processes live in that
//! namespace; under gVisor the sandbox has a network stack of its own inside the sandbox kernel,
//! so nothing of it is there. (Sandboxes without a network are created with `NetworkDisabled`:
//! the engine keeps no namespace file for them, so the namespace is the one of the container's
//! init process.)
//!
//! Invariant 4 holds: no file of the sandbox is opened or followed. `/proc/<pid>` is opened as a
//! directory first, which pins that very process (were it gone and its pid reused, reads through
//! the descriptor fail instead of reaching the newcomer); its `cgroup` must name the container's
//! id (a learner cannot move a process out of the container's cgroup), and only then its
//! `ns/net`, a kernel file the learner cannot redirect. An abstract socket has no file at all;
//! the connect is non-blocking, so a learner's listener that never accepts cannot hold the
//! thread; and the namespace's only way out is its loopback (sandboxes have no capability to
//! change its routes). The socket's peer is learner-controlled, like the agent's file socket: the
//! proxy trusts nothing it says.

use std::os::fd::AsFd;

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

/// Connects to the abstract Unix socket `name` inside the network namespace of process `pid`,
/// which must be in container `id`'s cgroup. Blocking for a moment: call it off the async threads.
fn connect_in(pid: u32, id: &str, name: &str) -> std::io::Result<std::os::unix::net::UnixStream> {
    use std::io::Read;
    let ro = OFlags::RDONLY | OFlags::CLOEXEC;
    let proc = rustix::fs::open(format!("/proc/{pid}"), ro | OFlags::DIRECTORY | OFlags::NOFOLLOW, Mode::empty())?;
    let mut cgroup = String::new();
    std::fs::File::from(rustix::fs::openat(&proc, "cgroup", ro | OFlags::NOFOLLOW, Mode::empty())?)
        .take(64 * 1024)
        .read_to_string(&mut cgroup)?;
    if id.len() < 64 || !cgroup.lines().any(|l| l.contains(id)) {
        return Err(std::io::Error::other(format!("process {pid} is not in the container's cgroup")));
    }
    let ns = rustix::fs::openat(&proc, "ns/net", ro, Mode::empty())?;
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
/// with the connect, so no thread of the runner's is ever left in a sandbox's namespace. The
/// stream is watched for writing only while a write would block ([`quiet_socket`]): the agent
/// reading what the proxy wrote would otherwise wake the runner once more per message.
pub(super) async fn connect(pid: u32, id: &str, name: &str) -> anyhow::Result<quiet_socket::Stream> {
    let (id_owned, name_owned) = (id.to_string(), name.to_string());
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns-connect".into())
        .spawn(move || {
            let _ = tx.send(connect_in(pid, &id_owned, &name_owned));
        })
        .context("starting the namespace thread")?;
    let stream = rx
        .await
        .context("the namespace thread ended")?
        .with_context(|| format!("connecting to @{name} in the network namespace of process {pid}"))?;
    // Already non-blocking.
    Ok(quiet_socket::Stream::new(tokio::net::UnixStream::from_std(stream)?)?)
}
