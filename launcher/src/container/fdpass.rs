//! A byte and at most one descriptor over the launcher's socket pair (`SCM_RIGHTS`): the
//! child's console master to the launcher, the launcher's idmapped tree to the child.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// Sends `byte` with `fd`, if any.
pub fn send(sock: &UnixStream, byte: u8, fd: Option<&OwnedFd>) -> nix::Result<()> {
    let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&fds)]
    };
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&[byte])],
        &cmsgs,
        MsgFlags::empty(),
        None,
    )
    .map(drop)
}

/// Receives into `buf` (its length bounds what is read) and the descriptor sent with it, if
/// any (close-on-exec); returns the bytes read.
pub fn recv(sock: &UnixStream, buf: &mut [u8]) -> nix::Result<(usize, Option<OwnedFd>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let fd = msg
        .cmsgs()
        .ok()
        .into_iter()
        .flatten()
        .find_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        });
    // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
    Ok((msg.bytes, fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })))
}
