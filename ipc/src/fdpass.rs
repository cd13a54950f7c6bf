//! Passing file descriptors (a region's memfd, a doorbell eventfd) over a
//! unix stream socket with `SCM_RIGHTS`, next to a few bytes of ordinary data.
//!
//! Received descriptors are opened `O_CLOEXEC` (`MSG_CMSG_CLOEXEC`) so they do
//! not leak into processes the receiver later spawns. If the kernel had to
//! drop descriptors (`MSG_CTRUNC`: more were sent than `max_fds`), the ones that
//! did arrive are closed and the call fails rather than silently losing some.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Most descriptors one message may carry (the kernel's `SCM_MAX_FD` is 253).
pub const MAX_FDS: usize = 253;

/// Sends `data` (must be non-empty: a stream needs at least one byte to carry
/// the control message) with `fds` attached. Retries on `EINTR`; a short write
/// of the data is completed with plain writes (the descriptors travel with
/// the first byte).
pub fn send_with_fds(sock: &UnixStream, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if data.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "send_with_fds needs at least one data byte",
        ));
    }
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors for one message",
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let fd_bytes = mem::size_of_val(raw.as_slice());
    let space = if raw.is_empty() {
        0
    } else {
        // SAFETY: CMSG_SPACE is a pure size computation.
        (unsafe { libc::CMSG_SPACE(fd_bytes as u32) }) as usize
    };
    // u64 elements keep the control buffer aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is a valid "no name, no iov, no control" value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` writable, aligned bytes, which
        // is room for exactly one cmsghdr carrying `fd_bytes` of data, so
        // CMSG_FIRSTHDR is non-null and CMSG_DATA has `fd_bytes` of room.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                fd_bytes,
            );
        }
    }
    let sent = retry_on_eintr(|| {
        // SAFETY: msg points at live iov/control buffers for the call.
        unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) }
    })?;
    if sent < data.len() {
        io::Write::write_all(&mut &*sock, &data[sent..])?;
    }
    Ok(())
}

/// Makes the system call `call` (a `sendmsg` or `recvmsg`) again while it
/// fails with `EINTR`; its byte count, or its error.
fn retry_on_eintr(mut call: impl FnMut() -> libc::ssize_t) -> io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives up to `buf.len()` bytes and up to `max_fds` descriptors.
/// `n == 0` means end of stream. Retries on `EINTR`.
pub fn recv_with_fds(
    sock: &UnixStream,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let max_fds = max_fds.min(MAX_FDS);
    let space = if max_fds == 0 {
        0
    } else {
        // SAFETY: CMSG_SPACE is a pure size computation.
        (unsafe { libc::CMSG_SPACE((max_fds * mem::size_of::<RawFd>()) as u32) }) as usize
    };
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if space > 0 {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
    }
    let n = retry_on_eintr(|| {
        // SAFETY: msg points at live, writable iov/control buffers.
        unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) }
    })?;
    let mut fds = Vec::new();
    if space > 0 {
        // SAFETY: the kernel filled msg_control/msg_controllen; the CMSG_*
        // macros walk only within msg_controllen, and each SCM_RIGHTS payload
        // holds (cmsg_len - CMSG_LEN(0)) / 4 descriptors that are now ours.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data_len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let count = data_len / mem::size_of::<RawFd>();
                    let p = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    for i in 0..count {
                        fds.push(OwnedFd::from_raw_fd(p.add(i).read_unaligned()));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
    }
    // CMSG_SPACE padding can let one more descriptor in than asked for: the
    // caller's bound is the contract, so that is a truncation too.
    if msg.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() > max_fds {
        drop(fds);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "descriptors truncated (peer sent more than max_fds)",
        ));
    }
    Ok((n, fds))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;

    #[test]
    fn passes_fds_and_data() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut f = tempfile_in_memfd();
        f.write_all(b"hello").unwrap();
        send_with_fds(&a, b"xy", &[f.as_fd(), f.as_fd()]).unwrap();
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(&b, &mut buf, 4).unwrap();
        assert_eq!(&buf[..n], b"xy");
        assert_eq!(fds.len(), 2);
        let mut g = std::fs::File::from(fds.into_iter().next().unwrap());
        g.rewind().unwrap();
        let mut s = String::new();
        g.read_to_string(&mut s).unwrap();
        assert!(s.starts_with("hello"));
    }

    #[test]
    fn truncated_fds_are_an_error_and_eof_is_zero() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = tempfile_in_memfd();
        for sent in [2, 3] {
            send_with_fds(&a, b"x", &vec![f.as_fd(); sent]).unwrap();
            let mut buf = [0u8; 4];
            let e = recv_with_fds(&b, &mut buf, 1).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        }
        let mut buf = [0u8; 4];
        assert!(send_with_fds(&a, b"", &[]).is_err());
        send_with_fds(&a, b"plain", &[]).unwrap();
        let (n, fds) = recv_with_fds(&b, &mut buf, 0).unwrap();
        assert_eq!((n, fds.len()), (4, 0));
        drop(a);
        let (n, _) = recv_with_fds(&b, &mut buf, 1).unwrap();
        assert_eq!(n, 1); // the rest of "plain"
        let (n, fds) = recv_with_fds(&b, &mut buf, 1).unwrap();
        assert_eq!((n, fds.len()), (0, 0));
    }

    fn tempfile_in_memfd() -> std::fs::File {
        let r = crate::region::MemfdRegion::create("fdpass-test", 4096).unwrap();
        std::fs::File::from(r.fd().try_clone_to_owned().unwrap())
    }
}
