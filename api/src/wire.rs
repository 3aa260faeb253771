//! Framing (a 4-byte big-endian length, then JSON) and the blocking client.
//!
//! The daemon reads the same frames with tokio; the client here is plain `std` so the launcher
//! links no async runtime.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, connect, sendmsg, socket,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{ApiError, Request, Response};

/// Largest frame either side accepts: far above any real request, small enough that a broken
/// or hostile peer cannot make the daemon allocate much.
pub const MAX_FRAME: usize = 1 << 20;

/// How long the client waits for the daemon to take a request and to answer it.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Encodes `msg` as one frame.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serialising our own plain data types cannot fail.
    let body = serde_json::to_vec(msg).unwrap_or_default();
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer announced a frame larger than [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME} bytes")]
    TooLarge(usize),
    /// The body is not the JSON we expect.
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
    /// Reading failed or the peer closed the connection early.
    #[error("reading the message failed: {0}")]
    Io(#[from] io::Error),
}

/// The body length a frame header announces, checked against [`MAX_FRAME`].
pub fn body_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes a frame body.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    Ok(serde_json::from_slice(body)?)
}

/// Why a client request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error(
        "rnetd is not running (no daemon at {path}); start it with `rnetd` as root, or point --runtime-dir/RNET_RUNTIME_DIR at its runtime directory"
    )]
    NotRunning {
        /// The socket tried.
        path: PathBuf,
    },
    /// Connecting failed for another reason.
    #[error("cannot connect to rnetd at {path}: {source}")]
    Connect {
        /// The socket tried.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// rnetd did not take the request, or did not answer it, within the client's timeout
    /// ([`CLIENT_TIMEOUT`] unless [`Client::with_timeout`] says otherwise).
    #[error(
        "timed out: rnetd at {} did not answer \"{what}\" within {secs} s (overloaded or hung)",
        path.display()
    )]
    Timeout {
        /// The request, as [`Request::describe`] says it.
        what: String,
        /// The limit, in seconds.
        secs: f64,
        /// The socket.
        path: PathBuf,
    },
    /// Sending or receiving failed.
    #[error("talking to rnetd failed: {0}")]
    Io(#[from] io::Error),
    /// The daemon's answer could not be read.
    #[error("rnetd sent an unreadable answer: {0}")]
    Frame(#[from] FrameError),
    /// The daemon refused the request.
    #[error("{0}")]
    Api(ApiError),
}

/// A blocking connection to `rnetd`.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client of the daemon whose runtime directory is `runtime_dir`.
    pub fn new(runtime_dir: &Path) -> Self {
        Self {
            path: runtime_dir.join(super::SOCKET_NAME),
            timeout: CLIENT_TIMEOUT,
        }
    }

    /// The same client, waiting `timeout` (instead of [`CLIENT_TIMEOUT`]) for each send and
    /// for the answer.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks that a daemon accepts connections, without sending a request.
    pub fn ping(&self) -> Result<(), ClientError> {
        self.connect("connect").map(drop)
    }

    /// Connects for request `what`, with the timeouts set before the connect: when the
    /// socket's listen backlog is full (rnetd not accepting), a blocking connect waits for
    /// rnetd to accept for at most the send timeout (Linux's `unix_stream_connect` waits
    /// `SO_SNDTIMEO`), not for ever.
    fn connect(&self, what: &str) -> Result<UnixStream, ClientError> {
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| ClientError::Io(e.into()))?;
        let stream = UnixStream::from(fd);
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        let connected =
            UnixAddr::new(&self.path).and_then(|addr| connect(stream.as_raw_fd(), &addr));
        match connected.map_err(io::Error::from) {
            Ok(()) => Ok(stream),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                Err(ClientError::NotRunning {
                    path: self.path.clone(),
                })
            }
            Err(e) if is_timeout(&e) => Err(self.timed_out(what, e)),
            Err(source) => Err(ClientError::Connect {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Sends `req` (with `fd` as `SCM_RIGHTS` if given) and returns the daemon's answer;
    /// a [`Response::Error`] becomes [`ClientError::Api`].
    pub fn call(&self, req: &Request, fd: Option<BorrowedFd<'_>>) -> Result<Response, ClientError> {
        self.send(req, fd)?.answer()
    }

    /// Sends `req` (with `fd`) and returns at once: the caller does other work while the daemon
    /// handles it, then reads the answer with [`Pending::answer`] (as [`Client::call`] does).
    pub fn send(&self, req: &Request, fd: Option<BorrowedFd<'_>>) -> Result<Pending, ClientError> {
        let start = std::time::Instant::now();
        let what = req.describe();
        let mut stream = self.connect(&what)?;
        let timed_out = |e| self.timed_out(&what, e);
        let frame = encode(req);
        match fd {
            Some(fd) => {
                let fds = [fd.as_raw_fd()];
                let cmsg = [ControlMessage::ScmRights(&fds)];
                let sent = sendmsg::<()>(
                    stream.as_raw_fd(),
                    &[IoSlice::new(&frame)],
                    &cmsg,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(|e| timed_out(io::Error::from(e)))?;
                stream.write_all(&frame[sent..]).map_err(timed_out)?;
            }
            None => stream.write_all(&frame).map_err(timed_out)?,
        }
        Ok(Pending {
            stream,
            what,
            start,
            path: self.path.clone(),
            timeout: self.timeout,
        })
    }

    fn timed_out(&self, what: &str, e: io::Error) -> ClientError {
        timeout_error(e, what, &self.path, self.timeout)
    }
}

/// `e` as [`ClientError::Timeout`] when it is the socket's timeout expiring (a blocking socket
/// with `SO_RCVTIMEO`/`SO_SNDTIMEO` fails with `EAGAIN`), else as [`ClientError::Io`].
fn timeout_error(e: io::Error, what: &str, path: &Path, timeout: Duration) -> ClientError {
    if is_timeout(&e) {
        ClientError::Timeout {
            what: what.to_owned(),
            secs: timeout.as_secs_f64(),
            path: path.to_owned(),
        }
    } else {
        ClientError::Io(e)
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A request sent with [`Client::send`] whose answer is still to be read.
#[derive(Debug)]
pub struct Pending {
    stream: UnixStream,
    what: String,
    start: std::time::Instant,
    path: PathBuf,
    timeout: Duration,
}

impl Pending {
    /// Waits for the daemon's answer (its error as [`ClientError::Api`]).
    ///
    /// With `RNET_TIMINGS` set in the environment, how long the daemon took to answer is
    /// printed to stderr (`rnet: timing: attach machine web 3.2 ms`), for tests and diagnosis.
    pub fn answer(mut self) -> Result<Response, ClientError> {
        let answer = self.read();
        if std::env::var_os("RNET_TIMINGS").is_some() {
            // One write: a launcher's child may print to the same stderr meanwhile.
            let line = format!(
                "rnet: timing: {} {:.1} ms\n",
                self.what,
                self.start.elapsed().as_secs_f64() * 1e3
            );
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        }
        answer
    }

    fn read(&mut self) -> Result<Response, ClientError> {
        let timed_out = |e| timeout_error(e, &self.what, &self.path, self.timeout);
        let mut header = [0u8; 4];
        self.stream.read_exact(&mut header).map_err(timed_out)?;
        let mut body = vec![0u8; body_len(header)?];
        self.stream.read_exact(&mut body).map_err(timed_out)?;
        match decode::<Response>(&body)? {
            Response::Error(e) => Err(ClientError::Api(e)),
            other => Ok(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frame = encode(&Request::List);
        let len = body_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 4);
        assert_eq!(decode::<Request>(&frame[4..]).unwrap(), Request::List);
    }

    #[test]
    fn oversized_frames_are_refused() {
        let err = body_len(u32::MAX.to_be_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "frame of 4294967295 bytes exceeds the limit of 1048576 bytes"
        );
    }

    #[test]
    fn a_daemon_that_never_answers_is_one_line_naming_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let listener =
            std::os::unix::net::UnixListener::bind(dir.path().join(crate::SOCKET_NAME)).unwrap();
        let client = Client::new(dir.path()).with_timeout(Duration::from_millis(200));
        // Accepted (the backlog takes it) but never read nor answered.
        let err = client.call(&Request::List, None).unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
        let text = err.to_string();
        assert_eq!(
            text,
            format!(
                "timed out: rnetd at {} did not answer \"list machines\" within 0.2 s (overloaded or hung)",
                client.path().display()
            )
        );
        drop(listener);
    }

    #[test]
    fn a_daemon_that_does_not_accept_is_a_timeout_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(crate::SOCKET_NAME);
        // A listener with a backlog of 0, which holds one connection that is never accepted:
        // the next connect finds the queue full and waits. (Non-blocking, for the accepts below.)
        let listener = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .unwrap();
        nix::sys::socket::bind(listener.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::new(0).unwrap()).unwrap();
        let _first = UnixStream::connect(&path).unwrap();
        let client = Client::new(dir.path()).with_timeout(Duration::from_millis(200));
        let err = client.call(&Request::List, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "timed out: rnetd at {} did not answer \"list machines\" within 0.2 s (overloaded or hung)",
                path.display()
            )
        );
        // The client gave up in its connect: only the first connection ever reached the queue.
        let flags = SockFlag::SOCK_CLOEXEC;
        let first = nix::sys::socket::accept4(listener.as_raw_fd(), flags);
        assert!(first.is_ok(), "{first:?}");
        let second = nix::sys::socket::accept4(listener.as_raw_fd(), flags);
        assert_eq!(second, Err(nix::errno::Errno::EAGAIN));
    }

    #[test]
    fn missing_daemon_is_one_clear_line() {
        let dir = std::env::temp_dir().join(format!("rnet-no-daemon-{}", std::process::id()));
        let err = Client::new(&dir).call(&Request::List, None).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("rnetd is not running"), "{text}");
        assert!(!text.contains('\n'));
    }
}
