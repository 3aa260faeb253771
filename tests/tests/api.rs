//! End-to-end tests of rnetd's API against hostile clients: fds that are not the container's
//! network namespace, frames cut short or full of garbage, a thousand idle connections, an fd
//! table that runs out, and unprivileged callers. After each, rnetd must still serve and must
//! have built nothing.

use std::fs;
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use netd::api::{ErrorKind, Request, Response, wire};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use rig::{Rig, ok, output, privileged, wait_until};

use netd::server::REQUEST_TIMEOUT;

/// How far rnetd's fd count may drift for reasons of its own (a helper's pipe, a timer).
const FD_SLACK: usize = 5;

/// rnetd's request timeout plus slack for a loaded machine.
const IDLE_CLOSE_LIMIT: Duration = Duration::from_secs(REQUEST_TIMEOUT.as_secs() + 10);

fn socket(rig: &Rig) -> PathBuf {
    rig.runtime_dir().join("rnetd.sock")
}

/// Sends `bytes` (with `fd` as `SCM_RIGHTS` on the first byte if given), half-closes, and
/// returns the answer frame's body, or `None` if rnetd closed without answering.
fn exchange(sock: &Path, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> Option<Vec<u8>> {
    let mut s = UnixStream::connect(sock).expect("connect to rnetd");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    send(&mut s, bytes, fd);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    if out.len() < 4 {
        return None;
    }
    let len = wire::body_len(out[..4].try_into().unwrap()).expect("sane answer length");
    assert_eq!(out.len(), 4 + len, "one whole answer frame");
    Some(out.split_off(4))
}

fn send(s: &mut UnixStream, bytes: &[u8], fd: Option<BorrowedFd<'_>>) {
    match fd {
        Some(fd) if !bytes.is_empty() => {
            let fds = [fd.as_raw_fd()];
            let n = sendmsg::<()>(
                s.as_raw_fd(),
                &[IoSlice::new(bytes)],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .expect("sendmsg");
            s.write_all(&bytes[n..]).unwrap();
        }
        _ => s.write_all(bytes).unwrap(),
    }
}

/// The `bad_request` message rnetd answers `bytes` with; panics on any other answer.
fn refusal(sock: &Path, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> String {
    let body = exchange(sock, bytes, fd).expect("an answer");
    match wire::decode::<Response>(&body).expect("a response") {
        Response::Error(e) => {
            assert_eq!(e.kind, ErrorKind::BadRequest, "{e:?}");
            assert!(!e.message.contains('\n'), "one line: {:?}", e.message);
            e.message
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn frame(json: &str) -> Vec<u8> {
    let mut f = u32::try_from(json.len()).unwrap().to_be_bytes().to_vec();
    f.extend_from_slice(json.as_bytes());
    f
}

/// A process of our own in a fresh network namespace, to offer as a container.
fn netns_holder() -> Child {
    let child = Command::new("unshare")
        .args(["--net", "sleep", "120"])
        .spawn()
        .expect("unshare");
    let pid = child.id();
    assert!(wait_until(Duration::from_secs(5), || {
        fs::read_link(format!("/proc/{pid}/ns/net")).ok() != fs::read_link("/proc/self/ns/net").ok()
    }));
    child
}

/// The number of fds rnetd has open.
fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// CPU time (user + system) rnetd used so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of /proc/PID/stat; `rest` starts at field 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Panics unless rnetd is alive, answers `list` with no machine, and built no link or table.
fn assert_serving_and_clean(rig: &Rig) {
    let pid = rig.rnetd_pid();
    let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        !state.is_empty() && !state.contains(") Z "),
        "rnetd died; log:\n{}",
        rig.log()
    );
    match rig.client().call(&Request::List, None) {
        Ok(Response::Machines(m)) => assert!(m.is_empty(), "{m:?}"),
        other => panic!("list failed: {other:?}; log:\n{}", rig.log()),
    }
    assert!(rig.host_links().is_empty(), "{:?}", rig.host_links());
    assert!(rig.nft_table().is_none(), "a table was created");
    rig.assert_no_panic();
}

#[test]
fn attach_with_a_hostile_fd_is_refused_and_rnetd_keeps_serving() {
    if !privileged("attach_with_a_hostile_fd_is_refused_and_rnetd_keeps_serving") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let sock = socket(&rig);
    let mut holder = netns_holder();
    let mut other = netns_holder();
    let pid = holder.id();
    let attach = |pid: u32| {
        frame(&format!(
            r#"{{"attach":{{"machine":"hostile","pid":{pid},"network":"veth"}}}}"#
        ))
    };
    let not_netns = |kind: &str| format!("the passed fd is not a network namespace (it is {kind})");

    let file = tempfile::tempfile().unwrap();
    let msg = refusal(&sock, &attach(pid), Some(file.as_fd()));
    assert_eq!(msg, not_netns("a regular file"));
    assert_serving_and_clean(&rig);

    let (a, _b) = UnixStream::pair().unwrap();
    assert_eq!(
        refusal(&sock, &attach(pid), Some(a.as_fd())),
        not_netns("a socket")
    );
    assert_serving_and_clean(&rig);

    let mnt = fs::File::open(format!("/proc/{pid}/ns/mnt")).unwrap();
    assert_eq!(
        refusal(&sock, &attach(pid), Some(mnt.as_fd())),
        not_netns("a mount namespace")
    );
    assert_serving_and_clean(&rig);

    // Another process's namespace than the pid's in the request.
    let others = fs::File::open(format!("/proc/{}/ns/net", other.id())).unwrap();
    assert_eq!(
        refusal(&sock, &attach(pid), Some(others.as_fd())),
        format!("the passed fd is not the network namespace of pid {pid}")
    );
    assert_serving_and_clean(&rig);

    // rnetd's own namespace (the rig's host netns, never this machine's), with rnetd's pid so
    // that the pid check passes and the own-namespace check has to catch it.
    let rnetd = rig.rnetd_pid();
    let own = fs::File::open(format!("/proc/{rnetd}/ns/net")).unwrap();
    assert_eq!(
        refusal(&sock, &attach(rnetd), Some(own.as_fd())),
        "the passed network namespace is rnetd's own; a container needs a private one"
    );
    assert_serving_and_clean(&rig);

    assert_eq!(
        refusal(&sock, &attach(pid), None),
        "attach needs the container's network namespace passed as an SCM_RIGHTS fd"
    );
    assert_serving_and_clean(&rig);

    // The same request with the right fd works: the refusals were about the fds.
    let ns = fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
    let body = exchange(&sock, &attach(pid), Some(ns.as_fd())).unwrap();
    assert!(
        matches!(wire::decode::<Response>(&body), Ok(Response::Attached(_))),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(rig.host_has_link("ve-hostile"));
    holder.kill().unwrap();
    holder.wait().unwrap();
    other.kill().unwrap();
    other.wait().unwrap();
    rig.assert_all_gone();
}

#[test]
fn a_request_cut_at_every_byte_never_hurts_rnetd() {
    if !privileged("a_request_cut_at_every_byte_never_hurts_rnetd") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let sock = socket(&rig);
    let mut holder = netns_holder();
    let pid = holder.id();
    let ns = fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
    let full = frame(&format!(
        r#"{{"attach":{{"machine":"cut","pid":{pid},"network":"veth","ports":[{{"proto":"tcp","host_address":null,"host_first":8080,"host_last":8080,"container_port":80}}]}}}}"#
    ));
    let rnetd = rig.rnetd_pid();
    // Once rnetd's own fds (sockets, the nft monitor's pipe) have settled.
    let mut baseline = fd_count(rnetd);
    wait_until(Duration::from_secs(5), || {
        std::thread::sleep(Duration::from_millis(200));
        let now = fd_count(rnetd);
        std::mem::replace(&mut baseline, now) == now
    });
    for k in 0..full.len() {
        // With and without the namespace fd riding on the first byte.
        for fd in [None, Some(ns.as_fd())] {
            let mut s = UnixStream::connect(&sock).unwrap();
            send(&mut s, &full[..k], fd);
            drop(s);
        }
    }
    // Every cut connection is answered or dropped, and the fds that came with them are closed.
    assert!(
        wait_until(Duration::from_secs(10), || fd_count(rnetd) <= baseline),
        "rnetd holds {} fds, {baseline} before; log:\n{}",
        fd_count(rnetd),
        rig.log()
    );
    assert_serving_and_clean(&rig);
    // The whole request is served.
    let body = exchange(&sock, &full, Some(ns.as_fd())).unwrap();
    assert!(
        matches!(wire::decode::<Response>(&body), Ok(Response::Attached(_))),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(rig.host_has_link("ve-cut"));
    holder.kill().unwrap();
    holder.wait().unwrap();
    rig.assert_all_gone();
    rig.assert_no_panic();
}

#[test]
fn garbage_frames_get_one_line_refusals() {
    if !privileged("garbage_frames_get_one_line_refusals") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let sock = socket(&rig);
    let with_len = |len: u32, body: &[u8]| {
        let mut f = len.to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    };
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            with_len(u32::MAX, b""),
            "frame of 4294967295 bytes exceeds the limit of 1048576 bytes",
        ),
        (
            with_len((1 << 20) + 1, b"{}"),
            "frame of 1048577 bytes exceeds the limit of 1048576 bytes",
        ),
        (
            with_len(5, b"\xff\xfe\x00\x80\xc3"),
            "malformed message: expected value at line 1 column 1",
        ),
        (
            frame("\"li\u{fffd}st\""),
            "malformed message: unknown variant `li\u{fffd}st`",
        ),
        (
            with_len(6, b"\"\xc3\x28\xa0\xa1\""),
            "malformed message: invalid unicode code point",
        ),
        (
            with_len(0, b""),
            "malformed message: EOF while parsing a value",
        ),
        (
            frame("null"),
            "malformed message: expected value at line 1 column 1",
        ),
        (
            frame("{}"),
            "malformed message: expected value at line 1 column 2",
        ),
        (
            frame(r#"{"attach":5}"#),
            "malformed message: invalid type: integer `5`",
        ),
        (
            frame(r#""list" x"#),
            "malformed message: trailing characters",
        ),
        // Typed decoding stops at the first bracket: no deep recursion, no stack to overflow.
        (
            frame(&deep),
            "malformed message: expected value at line 1 column 1",
        ),
        (
            frame(r#"{"zone_create":{"name":"lab","subnet":"127.0.0.0/8"}}"#),
            "malformed message: zone subnet 127.0.0.0/8: not a unicast range",
        ),
        (
            frame(r#"{"attach":{"machine":"m","pid":1,"network":{"bridge":"br0/../x"}}}"#),
            r#"malformed message: bridge: interface name "br0/../x" contains '/'"#,
        ),
        (
            frame(
                r#"{"attach":{"machine":"m","pid":1,"network":"none","links":[{"veth_extra":{"host":"a b"}}]}}"#,
            ),
            r#"malformed message: extra veth host side: interface name "a b" contains ' '"#,
        ),
        (
            frame(
                r#"{"attach":{"machine":"m","pid":1,"network":"veth","ports":[{"proto":"tcp","host_address":null,"host_first":9,"host_last":8,"container_port":1}]}}"#,
            ),
            r#"malformed message: invalid port mapping "tcp:9-8:1": range 9-8 runs backwards"#,
        ),
        (
            with_len(100, b"{\"list"),
            "reading the message failed: connection closed before a whole request arrived",
        ),
    ];
    let mut wrong = Vec::new();
    for (bytes, expected) in cases {
        let msg = refusal(&sock, &bytes, None);
        if !msg.starts_with(expected) {
            let head = String::from_utf8_lossy(&bytes[..bytes.len().min(60)]).into_owned();
            wrong.push(format!("{head:?}: {msg:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "unexpected answers:\n{}",
        wrong.join("\n")
    );
    // Bytes after a whole frame are ignored: the frame is served.
    let mut extra = frame(r#""list""#);
    extra.extend_from_slice(b"\x00\x00\x00\x05junk");
    let body = exchange(&sock, &extra, None).unwrap();
    assert_eq!(
        wire::decode::<Response>(&body).unwrap(),
        Response::Machines(vec![])
    );
    assert_serving_and_clean(&rig);
}

/// Raises this test process's soft open-file limit to `want` (or the hard limit).
fn raise_own_fd_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we pass.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_cur < want {
        lim.rlim_cur = want.min(lim.rlim_max);
        // SAFETY: setrlimit reads the struct we pass.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    }
}

/// The soft and hard "Max open files" of `pid`.
fn nofile_limits(pid: u32) -> (String, String) {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].to_owned(), f[4].to_owned())
}

#[test]
fn a_thousand_idle_connections_neither_starve_nor_stay() {
    if !privileged("a_thousand_idle_connections_neither_starve_nor_stay") {
        return;
    }
    raise_own_fd_limit(4096);
    let mut rig = Rig::new();
    rig.start_rnetd();
    let rnetd = rig.rnetd_pid();
    let (soft, hard) = nofile_limits(rnetd);
    assert_eq!(soft, hard, "rnetd raises its soft open-file limit");
    let sock = socket(&rig);
    // One attach first, so that whatever rnetd opens for good on its first machine is counted.
    ok(rig.rnet().args(["run", "-n", "-M", "warm", "--", "true"]));
    rig.settle(); // and its teardown done (the launcher does not wait for it)
    let baseline = fd_count(rnetd);
    let list_frame = frame(r#""list""#);
    let mut idle = Vec::new();
    for i in 0..1000 {
        let mut s = UnixStream::connect(&sock).expect("connect");
        // Every other one sends half a frame.
        if i % 2 == 1 {
            s.write_all(&list_frame[..list_frame.len() / 2]).unwrap();
        }
        idle.push(s);
    }
    let opened = Instant::now();
    assert!(
        wait_until(REQUEST_TIMEOUT / 2, || fd_count(rnetd) + FD_SLACK
            >= baseline + 1000),
        "rnetd accepted only about {} of 1000 connections",
        fd_count(rnetd).saturating_sub(baseline)
    );
    // Meanwhile a reader and a writer are served at once.
    let t0 = Instant::now();
    let answer = rig.client().call(&Request::List, None);
    let took = t0.elapsed();
    assert!(matches!(answer, Ok(Response::Machines(_))), "{answer:?}");
    assert!(took < Duration::from_secs(1), "list took {took:?}");
    eprintln!("list with 1000 idle connections took {took:?}");
    ok(rig.rnet().args(["run", "-n", "-M", "busy", "--", "true"]));
    assert!(
        opened.elapsed() < REQUEST_TIMEOUT,
        "the checks above ran past the request timeout, so they proved nothing; took {:?}",
        opened.elapsed()
    );
    // rnetd answers each idle connection with a timeout and closes it.
    for s in &mut idle {
        s.set_read_timeout(Some(IDLE_CLOSE_LIMIT)).unwrap();
    }
    let mut answered = 0;
    for s in idle.iter_mut().step_by(97) {
        let mut out = Vec::new();
        s.read_to_end(&mut out)
            .expect("rnetd closes an idle connection");
        let body = &out[4..];
        match wire::decode::<Response>(body).unwrap() {
            Response::Error(e) => assert_eq!(
                e.message,
                format!(
                    "timed out waiting for the request ({} s)",
                    REQUEST_TIMEOUT.as_secs()
                )
            ),
            other => panic!("{other:?}"),
        }
        answered += 1;
    }
    assert!(answered >= 10);
    assert!(
        wait_until(IDLE_CLOSE_LIMIT, || fd_count(rnetd) <= baseline + FD_SLACK),
        "rnetd still holds {} fds, {baseline} before",
        fd_count(rnetd)
    );
    drop(idle);
    assert_serving_and_clean(&rig);
}

#[test]
fn running_out_of_fds_neither_spins_nor_kills_rnetd() {
    if !privileged("running_out_of_fds_neither_spins_nor_kills_rnetd") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let rnetd = rig.rnetd_pid();
    let sock = socket(&rig);
    let (soft, hard) = nofile_limits(rnetd);
    // Room for a few connections only.
    let tight = fd_count(rnetd) + 8;
    ok(Command::new("prlimit").args([
        "--pid",
        &rnetd.to_string(),
        &format!("--nofile={tight}:{hard}"),
    ]));
    let conns: Vec<UnixStream> = (0..50)
        .map(|_| UnixStream::connect(&sock).expect("connect (queued)"))
        .collect();
    assert!(wait_until(Duration::from_secs(5), || rig
        .log()
        .contains("accepting a connection failed")));
    let ticks = cpu_ticks(rnetd);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(rnetd) - ticks;
    // A spinning accept loop burns a whole core: ~200 ticks in 2 s.
    assert!(used < 40, "rnetd used {used} ticks in 2 s while out of fds");
    ok(Command::new("prlimit").args([
        "--pid",
        &rnetd.to_string(),
        &format!("--nofile={soft}:{hard}"),
    ]));
    drop(conns);
    assert!(
        wait_until(Duration::from_secs(20), || rig
            .client()
            .call(&Request::List, None)
            .is_ok()),
        "rnetd does not serve after fds are back; log:\n{}",
        rig.log()
    );
    assert_serving_and_clean(&rig);
}

#[test]
fn non_root_can_read_zones_but_not_change_them() {
    if !privileged("non_root_can_read_zones_but_not_change_them") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let nobody = |args: &[&str]| {
        output(
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(rig::bin("rnet"))
                .arg("--runtime-dir")
                .arg(rig.runtime_dir())
                .args(args),
        )
    };
    let denied = |out: &std::process::Output, asked: &str| {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(
            err,
            format!(
                "rnet: permission denied: caller uid 65534 asked to {asked}; only root may change machines or zones\n"
            )
        );
    };
    denied(&nobody(&["zone", "create", "nope"]), "create zone nope");
    assert!(!rig.host_has_link("vz-nope"));
    ok(rig.rnet().args(["zone", "create", "kept"]));
    denied(&nobody(&["zone", "delete", "kept"]), "delete zone kept");
    denied(
        &nobody(&["zone", "delete", "--force", "kept"]),
        "delete zone kept (forced)",
    );
    assert!(rig.host_has_link("vz-kept"));
    let out = nobody(&["zone", "list"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("kept"));
    let out = nobody(&["zone", "show", "kept"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(rig.rnet().args(["zone", "delete", "kept"]));
    assert!(!rig.host_has_link("vz-kept"));
    rig.assert_no_panic();
}
