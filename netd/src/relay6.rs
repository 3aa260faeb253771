//! Published ports on `[::1]`: a userspace relay. The kernel cannot DNAT a connection from
//! `::1` to a container (IPv6 has no `route_localnet`: a `::1`-sourced packet never leaves
//! the host), so where `127.0.0.1` is DNATed in the `output` chain, `::1` is excluded there
//! and answered by these sockets instead: a TCP listener and a UDP socket on `[::1]:PORT` for
//! each host port published on every address or on `::1`, relaying to the container. They
//! start with the first such port and stop with the last (nothing listens while none is
//! published). The container sees the connection coming from its gateway.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::AbortHandle;
use tracing::{debug, trace};

use crate::api::{PortSpec, Proto};

/// A UDP flow without traffic for this long is forgotten (conntrack's UDP stream timeout).
const UDP_IDLE: Duration = Duration::from_secs(120);

/// At most this many UDP flows per port; the oldest is dropped beyond it.
const UDP_FLOWS: usize = 256;

/// The host ports a spec publishes on `::1`, each with its container port.
pub fn loopback_ports(spec: &PortSpec) -> Vec<(u16, u16)> {
    let on_loopback = match spec.host_address {
        None => true,
        Some(IpAddr::V6(a)) => a.is_loopback(),
        Some(IpAddr::V4(_)) => false,
    };
    if !on_loopback {
        return Vec::new();
    }
    (spec.host_first..=spec.host_last)
        .map(|h| (h, spec.container_port + (h - spec.host_first)))
        .collect()
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The relays of all published ports on `::1`, by protocol and host port.
#[derive(Default)]
pub struct Relays {
    tasks: StdMutex<HashMap<(Proto, u16), AbortHandle>>,
}

impl Relays {
    /// No relays.
    pub fn new() -> Self {
        Self::default()
    }

    /// Relays the ports of `spec` on `::1` to `target`; on error none of them is left.
    pub fn start(&self, spec: &PortSpec, target: IpAddr) -> io::Result<()> {
        let mut started = Vec::new();
        for (host, cont) in loopback_ports(spec) {
            let to = SocketAddr::new(target, cont);
            let result = match spec.proto {
                Proto::Tcp => tcp(host, to),
                Proto::Udp => udp(host, to),
            };
            match result {
                Ok(task) => {
                    lock(&self.tasks).insert((spec.proto, host), task);
                    started.push(host);
                }
                Err(e) => {
                    for h in started {
                        self.stop_one(spec.proto, h);
                    }
                    return Err(io::Error::new(
                        e.kind(),
                        format!("relaying [::1]:{host}/{}: {e}", spec.proto),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Stops the relays of `spec`.
    pub fn stop(&self, spec: &PortSpec) {
        for (host, _) in loopback_ports(spec) {
            self.stop_one(spec.proto, host);
        }
    }

    fn stop_one(&self, proto: Proto, host: u16) {
        if let Some(t) = lock(&self.tasks).remove(&(proto, host)) {
            t.abort();
        }
    }

    /// How many ports are relayed.
    pub fn len(&self) -> usize {
        lock(&self.tasks).len()
    }

    /// Whether nothing is relayed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        lock(&self.tasks).values().for_each(AbortHandle::abort);
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port)
}

fn tcp(port: u16, to: SocketAddr) -> io::Result<AbortHandle> {
    let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&loopback(port).into())?;
    s.listen(128)?;
    let listener = TcpListener::from_std(s.into())?;
    debug!(port, %to, "TCP relay on [::1] started");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut upstream) = TcpStream::connect(to).await else {
                    trace!(%to, "relay target refused");
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    })
    .abort_handle())
}

fn udp(port: u16, to: SocketAddr) -> io::Result<AbortHandle> {
    let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None)?;
    s.set_nonblocking(true)?;
    s.bind(&loopback(port).into())?;
    let socket = Arc::new(UdpSocket::from_std(s.into())?);
    debug!(port, %to, "UDP relay on [::1] started");
    Ok(tokio::spawn(udp_loop(socket, to)).abort_handle())
}

/// One UDP flow: a connected socket towards the container and the task sending its answers
/// back to the client.
struct Flow {
    upstream: Arc<UdpSocket>,
    task: AbortHandle,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn udp_loop(socket: Arc<UdpSocket>, to: SocketAddr) {
    let flows: Arc<FlowMap> = Arc::default();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, client)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let existing = lock(&flows).get_mut(&client).map(|(f, seen)| {
            *seen = tokio::time::Instant::now();
            Arc::clone(&f.upstream)
        });
        let upstream = match existing {
            Some(u) => u,
            None => {
                let local: SocketAddr = if to.is_ipv4() {
                    (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let Ok(u) = UdpSocket::bind(local).await else {
                    continue;
                };
                if u.connect(to).await.is_err() {
                    continue;
                }
                let u = Arc::new(u);
                let task = tokio::spawn(udp_back(
                    Arc::clone(&u),
                    Arc::clone(&socket),
                    client,
                    Arc::clone(&flows),
                ))
                .abort_handle();
                let mut map = lock(&flows);
                if map.len() >= UDP_FLOWS
                    && let Some(oldest) = map.iter().min_by_key(|(_, (_, t))| *t).map(|(a, _)| *a)
                {
                    map.remove(&oldest);
                }
                map.insert(
                    client,
                    (
                        Flow {
                            upstream: Arc::clone(&u),
                            task,
                        },
                        tokio::time::Instant::now(),
                    ),
                );
                u
            }
        };
        let _ = upstream.send(&buf[..n]).await;
    }
}

type FlowMap = StdMutex<HashMap<SocketAddr, (Flow, tokio::time::Instant)>>;

/// Answers of the container to one client, until the flow idles out.
async fn udp_back(
    upstream: Arc<UdpSocket>,
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    flows: Arc<FlowMap>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        match tokio::time::timeout(UDP_IDLE, upstream.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                let _ = socket.send_to(&buf[..n], client).await;
            }
            Ok(Err(_)) => {}
            Err(_) => {
                let idle = lock(&flows)
                    .get(&client)
                    .is_some_and(|(_, seen)| seen.elapsed() >= UDP_IDLE);
                if idle {
                    // Dropping the flow aborts this task, which returns here anyway.
                    let flow = lock(&flows).remove(&client);
                    drop(flow);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> PortSpec {
        text.parse().unwrap()
    }

    #[test]
    fn loopback_ports_of_a_spec() {
        assert_eq!(loopback_ports(&spec("8080:80")), vec![(8080, 80)]);
        assert_eq!(
            loopback_ports(&spec("[::1]:8000-8002:90")),
            vec![(8000, 90), (8001, 91), (8002, 92)]
        );
        assert!(loopback_ports(&spec("127.0.0.1:8080:80")).is_empty());
        assert!(loopback_ports(&spec("[2001:db8::2]:8080:80")).is_empty());
    }

    #[tokio::test]
    async fn tcp_and_udp_are_relayed_over_loopback() {
        // An echo server on 127.0.0.1 stands in for the container.
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_port = echo.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let uecho = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let uecho_port = uecho.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut b = [0u8; 100];
            while let Ok((n, from)) = uecho.recv_from(&mut b).await {
                let _ = uecho.send_to(&b[..n], from).await;
            }
        });
        // A free port on ::1 (skipped where the host has no ::1).
        let Ok(probe) = std::net::TcpListener::bind("[::1]:0") else {
            eprintln!("SKIP tcp_and_udp_are_relayed_over_loopback: no ::1 here");
            return;
        };
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let relays = Relays::new();
        let target: IpAddr = "127.0.0.1".parse().unwrap();
        relays
            .start(&spec(&format!("{port}:{echo_port}")), target)
            .unwrap();
        let uspec = spec(&format!("udp:{port}:{uecho_port}"));
        relays.start(&uspec, target).unwrap();
        assert_eq!(relays.len(), 2);
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = TcpStream::connect(loopback(port)).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        let u = UdpSocket::bind("[::1]:0").await.unwrap();
        u.send_to(b"pong", loopback(port)).await.unwrap();
        let mut b = [0u8; 10];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), u.recv_from(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&b[..n], b"pong");
        relays.stop(&uspec);
        relays.stop(&spec(&format!("{port}:{echo_port}")));
        assert!(relays.is_empty());
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(loopback(port)).await.is_err());
    }
}
