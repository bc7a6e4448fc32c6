//! The UDP socket of `vmtime sync --cross-check-ntp` (the client's logic is
//! `vmtime_core::crosscheck`): connected to the one server, non-blocking, so the daemon's loop
//! polls it like its other descriptors and never waits on the network.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};

/// A datagram socket connected to one NTP server: only its datagrams are received (the kernel
/// filters by the connected address), and neither send nor receive ever waits.
#[derive(Debug)]
pub struct SntpSocket {
    sock: UdpSocket,
    server: SocketAddr,
}

impl SntpSocket {
    /// A socket on an ephemeral port of the server's address family, connected to `server`.
    /// The address is given, never looked up: no name resolution can stall the daemon.
    pub fn connect(server: SocketAddr) -> io::Result<Self> {
        let local: SocketAddr = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("an address");
        let sock = UdpSocket::bind(local)?;
        sock.connect(server)?;
        sock.set_nonblocking(true)?;
        Ok(SntpSocket { sock, server })
    }

    /// The server.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Sends one datagram without waiting (a full buffer is an error, not a wait).
    pub fn send(&self, packet: &[u8]) -> io::Result<()> {
        let n = self.sock.send(packet)?;
        if n != packet.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "the datagram was cut"));
        }
        Ok(())
    }

    /// One datagram if one is waiting (`Ok(None)` if not). An ICMP error from an earlier send
    /// (nobody listens on the port) is returned once as an error.
    pub fn recv<'b>(&self, buf: &'b mut [u8]) -> io::Result<Option<&'b [u8]>> {
        match self.sock.recv(buf) {
            Ok(n) => Ok(Some(&buf[..n])),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// For the daemon's poller.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connected_socket_receives_only_its_server_and_never_waits() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        let s = SntpSocket::connect(server.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 64];
        let t = std::time::Instant::now();
        assert!(s.recv(&mut buf).unwrap().is_none(), "nothing waiting: no wait either");
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        s.send(b"hello").unwrap();
        let (n, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        // A datagram from elsewhere is not delivered; the server's is.
        other.send_to(b"forged", from).unwrap();
        server.send_to(b"reply", from).unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let got = loop {
            if let Some(d) = s.recv(&mut buf).unwrap() {
                break d.to_vec();
            }
            assert!(std::time::Instant::now() < until, "the server's datagram never came");
            std::thread::yield_now();
        };
        assert_eq!(got, b"reply");
        assert!(s.recv(&mut buf).unwrap().is_none());
    }
}
