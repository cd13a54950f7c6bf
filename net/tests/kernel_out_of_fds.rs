//! The kernel transport out of file descriptors: connections it cannot accept
//! are closed at once through its spare descriptor, not left waiting in the
//! backlog. (A test binary of its own: it lowers the process's open-files
//! limit, which would starve any test running beside it.)
#![allow(unsafe_code)] // getrlimit(2), setrlimit(2)

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nocturne_net::{KernelOptions, KernelTransport, Transport, TransportEvent};

fn open_files_limit() -> libc::rlimit {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(rc, 0);
    limit
}

fn set_open_files_soft_limit(soft: u64) {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: open_files_limit().rlim_max,
    };
    // SAFETY: setrlimit reads one rlimit struct we own.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
}

/// The open-files limit that leaves exactly `free` descriptor numbers
/// unused (the limit bounds the numbers, and new ones take the lowest free).
/// Probed with `fcntl`, which opens nothing itself.
fn limit_leaving(free: usize) -> u64 {
    let mut left = free;
    for fd in 0.. {
        // SAFETY: F_GETFD only reads the flags of `fd`, open or not.
        let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
        if !open {
            if left == 0 {
                return fd as u64;
            }
            left -= 1;
        }
    }
    unreachable!()
}

/// Whether the server closed `client` (EOF or reset) within `wait`; `false`
/// when it stays open and silent.
fn closed_by_server(client: &mut TcpStream, wait: Duration) -> bool {
    client.set_read_timeout(Some(wait)).unwrap();
    let mut byte = [0u8; 1];
    match client.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => panic!("the transport sent bytes"),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(e) => panic!("read: {e}"),
    }
}

#[test]
fn connections_that_find_no_descriptor_are_closed_not_left_waiting() {
    let mut t =
        KernelTransport::bind("127.0.0.1:0".parse().unwrap(), &KernelOptions::default()).unwrap();
    // Eight connections complete their handshakes into the backlog.
    let mut clients: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(t.local_addr()).unwrap())
        .collect();
    // Room for exactly two more descriptors (plus the spare, already open).
    let starting = open_files_limit();
    set_open_files_soft_limit(limit_leaving(2));

    let mut events = Vec::new();
    let mut accepted = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while accepted.len() < 2 || t.shed_connections() < 6 {
        assert!(
            Instant::now() < deadline,
            "accepted {accepted:?}, shed {}",
            t.shed_connections()
        );
        events.clear();
        t.poll(Some(Duration::from_millis(50)), &mut events)
            .unwrap();
        for e in &events {
            if let TransportEvent::Accepted(id) = e {
                accepted.push(*id);
            }
        }
    }
    assert_eq!((accepted.len(), t.shed_connections()), (2, 6));
    assert_eq!(t.connection_count(), 2);

    // The backlog is FIFO: the first two are served, the rest were closed
    // at once rather than left to hang.
    for (i, client) in clients.iter_mut().enumerate().skip(2) {
        assert!(
            closed_by_server(client, Duration::from_secs(5)),
            "client {i} still waits"
        );
    }
    for (i, client) in clients.iter_mut().enumerate().take(2) {
        assert!(
            !closed_by_server(client, Duration::from_millis(100)),
            "client {i} was accepted, yet closed"
        );
    }

    // With descriptors back, new connections are accepted again, and the
    // spare was taken back (a second shortage sheds again).
    set_open_files_soft_limit(starting.rlim_cur);
    let _late = TcpStream::connect(t.local_addr()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Instant::now() < deadline,
            "the late connection was not accepted"
        );
        events.clear();
        t.poll(Some(Duration::from_millis(50)), &mut events)
            .unwrap();
        if events
            .iter()
            .any(|e| matches!(e, TransportEvent::Accepted(_)))
        {
            break;
        }
    }
    assert_eq!(t.connection_count(), 3);
    let mut more: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(t.local_addr()).unwrap())
        .collect();
    set_open_files_soft_limit(limit_leaving(0));
    let deadline = Instant::now() + Duration::from_secs(20);
    while t.shed_connections() < 9 {
        assert!(Instant::now() < deadline, "shed {}", t.shed_connections());
        events.clear();
        t.poll(Some(Duration::from_millis(50)), &mut events)
            .unwrap();
    }
    set_open_files_soft_limit(starting.rlim_cur);
    for client in &mut more {
        assert!(closed_by_server(client, Duration::from_secs(5)));
    }
}
