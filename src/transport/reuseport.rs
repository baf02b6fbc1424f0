//! Which process gets what while two nodes share a port (`REUSE_PORT`, a
//! restart without a gap): the new node binds beside the old one, then the
//! old one drains.
//!
//! Left alone, the kernel spreads a port's traffic over its sockets by a
//! hash of the 4-tuple, modulo their number. Both halves of that are wrong
//! for a restart:
//!
//! - TCP: the draining node would still get half the new connections (and
//!   answer them 503), and closing its listener resets what waits in its
//!   accept queue. So new connections go to the newest listener: it joins
//!   the group only when it is about to accept ([`super::listen`]), and the
//!   old one's queue empties while it drains, before it closes.
//! - UDP: QUIC sessions live in one process, but when the group grows the
//!   hash sends about half of the live sessions' datagrams to the new
//!   process, which knows none of them: their packets go unanswered (or
//!   get a stateless reset) and those WebTransport sessions die. So every
//!   datagram goes to the oldest socket: live sessions stay whole until
//!   their node drains them (with `peer_offline` and a close), and the new
//!   node serves WebTransport from when the old one's socket closes.
//!   Steering by connection id instead would need the processes to agree
//!   on who is who; this does not try.
//!
//! Both are a classic BPF program on the group (`SO_ATTACH_REUSEPORT_CBPF`)
//! returning a socket's index: sockets are indexed in the order they
//! joined, and an index past the end falls back to the hash, so with one
//! node alone nothing changes. Elsewhere than on Linux the hash (or the
//! system's rule) applies, as documented in README.

/// Where the group's traffic goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steer {
    /// The socket that joined second: the new node while two share the port.
    Newest,
    /// The socket that joined first: the old node while two share the port.
    Oldest,
}

impl Steer {
    fn index(self) -> u32 {
        match self {
            Steer::Newest => 1,
            Steer::Oldest => 0,
        }
    }
}

/// Attaches the program that sends the group's traffic `to` one socket.
#[cfg(target_os = "linux")]
pub fn steer(socket: &socket2::Socket, to: Steer) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let mut program = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: to.index(),
    }];
    let fprog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `program`, both alive for the call; the
    // kernel copies the program and keeps no pointer to it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            std::ptr::from_ref(&fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
pub fn steer(_socket: &socket2::Socket, _to: Steer) -> std::io::Result<()> {
    Ok(())
}
