//! The Unix-socket server: one task per connection, one request per connection, the caller
//! checked with `SO_PEERCRED`, the container's netns fd received with `SCM_RIGHTS`.

use std::future::Future;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info, warn};

use crate::api::wire::{self, FrameError};
use crate::api::{ApiError, ErrorKind, Request, Response};
use crate::machines::Machines;

/// How long a client may take to send its whole request; a connection that is idle (or sends
/// half a frame) longer is answered with an error and closed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a client may take to read the answer: one that never reads cannot pin a task.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause after a failed `accept` (e.g. `EMFILE` when out of fds): the pending connection stays
/// queued, so retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves requests on `listener` until `shutdown` completes. Connections in progress are
/// abandoned at shutdown; the networking of attached machines stays in place.
pub async fn run(machines: Arc<Machines>, listener: UnixListener, shutdown: impl Future) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                info!("shutting down; attached machines keep their networking");
                machines.shutdown().await;
                return;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let machines = Arc::clone(&machines);
                    tokio::spawn(async move { serve(machines, stream).await });
                }
                Err(e) => {
                    warn!(error = %e, "accepting a connection failed; retrying shortly");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

async fn serve(machines: Arc<Machines>, mut stream: UnixStream) {
    let response = match handle(&machines, &stream).await {
        Ok(r) => r,
        Err(e) => Response::Error(e),
    };
    let frame = wire::encode(&response);
    match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&frame)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "client went away before the answer"),
        Err(_) => debug!("client did not read the answer in time; closing"),
    }
    crate::trim::poke();
}

async fn handle(machines: &Machines, stream: &UnixStream) -> Result<Response, ApiError> {
    let cred = stream
        .peer_cred()
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("SO_PEERCRED failed: {e}")))?;
    let (body, fd) = tokio::time::timeout(REQUEST_TIMEOUT, read_request(stream))
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorKind::BadRequest,
                format!(
                    "timed out waiting for the request ({} s)",
                    REQUEST_TIMEOUT.as_secs()
                ),
            )
        })?
        .map_err(|e| ApiError::new(ErrorKind::BadRequest, e.to_string()))?;
    let req: Request =
        wire::decode(&body).map_err(|e| ApiError::new(ErrorKind::BadRequest, e.to_string()))?;
    debug!(uid = cred.uid(), pid = ?cred.pid(), ?req, "request");
    authorize(cred.uid(), &req)?;
    match req {
        Request::Attach(a) => {
            let fd = fd.ok_or_else(|| {
                ApiError::new(
                    ErrorKind::BadRequest,
                    "attach needs the container's network namespace passed as an SCM_RIGHTS fd",
                )
            })?;
            machines.attach(a, fd).await.map(Response::Attached)
        }
        Request::Detach { machine } => machines.detach(&machine).await.map(|()| Response::Detached),
        Request::Stop { machine } => machines.stop(&machine).await.map(|()| Response::Stopping),
        Request::List => Ok(Response::Machines(machines.list().await)),
        Request::Status { machine } => machines.status(&machine).await.map(Response::Status),
        Request::ZoneCreate(config) => machines.zone_create(config).await.map(Response::Zone),
        Request::ZoneList => Ok(Response::Zones(machines.zone_list().await)),
        Request::ZoneShow { zone } => machines.zone_show(&zone).await.map(Response::Zone),
        Request::ZoneDelete { zone, force } => machines
            .zone_delete(&zone, force)
            .await
            .map(|()| Response::ZoneDeleted),
        Request::Release { owner } => machines.release(&owner).await.map(Response::Released),
        Request::ReleaseExcept { prefix, keep } => machines
            .release_except(&prefix, &keep)
            .await
            .map(Response::Released),
    }
}

/// Refuses a changing request from anyone but root, naming the caller and what it asked.
fn authorize(uid: u32, req: &Request) -> Result<(), ApiError> {
    if req.is_change() && uid != 0 {
        return Err(ApiError::new(
            ErrorKind::PermissionDenied,
            format!(
                "permission denied: caller uid {uid} asked to {}; only root may change machines or zones",
                req.describe()
            ),
        ));
    }
    Ok(())
}

/// Reads one frame; the first fd that arrives with it is kept, any others are closed.
async fn read_request(stream: &UnixStream) -> Result<(Vec<u8>, Option<OwnedFd>), FrameError> {
    let mut buf = Vec::new();
    let mut fd: Option<OwnedFd> = None;
    loop {
        if buf.len() >= 4 {
            let len = wire::body_len([buf[0], buf[1], buf[2], buf[3]])?;
            if buf.len() >= 4 + len {
                buf.truncate(4 + len);
                return Ok((buf.split_off(4), fd));
            }
        }
        stream.readable().await?;
        let mut chunk = [0u8; 8192];
        let raw = stream.as_raw_fd();
        let got = stream.try_io(Interest::READABLE, || recv_chunk(raw, &mut chunk));
        match got {
            Ok((0, _)) => {
                return Err(FrameError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a whole request arrived",
                )));
            }
            Ok((n, fds)) => {
                buf.extend_from_slice(&chunk[..n]);
                for f in fds {
                    if fd.is_none() {
                        fd = Some(f);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
}

fn recv_chunk(raw: RawFd, chunk: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(chunk)];
    let msg = recvmsg::<()>(
        raw,
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw_fds) = c {
            for r in raw_fds {
                // SAFETY: the kernel installed these fds in our table for this message; we are
                // their only owner.
                fds.push(unsafe { OwnedFd::from_raw_fd(r) });
            }
        }
    }
    Ok((msg.bytes, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{MachineName, ZoneName};

    #[test]
    fn only_root_changes_and_a_refusal_names_the_caller_and_the_request() {
        let stop = Request::Stop {
            machine: MachineName::new("web").unwrap(),
        };
        assert_eq!(authorize(0, &stop), Ok(()));
        assert_eq!(authorize(1000, &Request::List), Ok(()));
        let err = authorize(65534, &stop).unwrap_err();
        assert_eq!(err.kind, ErrorKind::PermissionDenied);
        assert_eq!(
            err.message,
            "permission denied: caller uid 65534 asked to stop machine web; only root may change machines or zones"
        );
        let delete = Request::ZoneDelete {
            zone: ZoneName::new("lab").unwrap(),
            force: true,
        };
        assert_eq!(
            authorize(1000, &delete).unwrap_err().message,
            "permission denied: caller uid 1000 asked to delete zone lab (forced); only root may change machines or zones"
        );
    }
}
