//! A raw client of rnetd for tests: sends the given bytes as one frame (optionally with an fd)
//! and prints the daemon's answer. Lets tests speak to the daemon as a broken or unprivileged
//! client would.
//!
//! Usage: rawclient SOCKET JSON [--fd PATH] [--no-frame]
//!        rawclient SOCKET HEXBYTES --hex     (raw bytes, no framing added)

use std::io::{IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: rawclient SOCKET JSON [--fd PATH] [--no-frame]");
        std::process::exit(2);
    }
    let mut stream = UnixStream::connect(&args[1]).expect("connect");
    let hex = args.iter().any(|a| a == "--hex");
    let body: Vec<u8> = if hex {
        (0..args[2].len() / 2)
            .map(|i| u8::from_str_radix(&args[2][2 * i..2 * i + 2], 16).expect("hex"))
            .collect()
    } else {
        args[2].as_bytes().to_vec()
    };
    let framed = !hex && !args.iter().any(|a| a == "--no-frame");
    let mut frame = Vec::new();
    if framed {
        frame.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    }
    frame.extend_from_slice(&body);
    let fd_file = args
        .iter()
        .position(|a| a == "--fd")
        .map(|i| std::fs::File::open(&args[i + 1]).expect("open fd path"));
    match &fd_file {
        Some(f) => {
            let fds = [f.as_raw_fd()];
            let n = sendmsg::<()>(
                stream.as_raw_fd(),
                &[IoSlice::new(&frame)],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            )
            .expect("sendmsg");
            stream.write_all(&frame[n..]).unwrap();
        }
        None => stream.write_all(&frame).unwrap(),
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    if out.len() >= 4 {
        println!("{}", String::from_utf8_lossy(&out[4..]));
    } else {
        println!("<no answer: {} bytes>", out.len());
    }
}
