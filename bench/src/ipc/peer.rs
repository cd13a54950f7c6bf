//! The peer process (`nocturne bench ipc-peer`): pins itself, attaches the
//! park board and each case from the descriptors the driver sends, and
//! serves the chunks the driver asks for, on one thread (the one the
//! driver's sleep probe watches). It dies with the driver
//! (`PR_SET_PDEATHSIG`) and exits when the control socket closes.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};

use crate::pin::{check_cores, pin_current_thread};

use super::control::{self, ControlError, Frame, MAX_SETUP_FDS, NO_CASE, PROTOCOL_VERSION};
use super::floor::FloorPeer;
use super::guard::Stop;
use super::park::ParkBoard;
use super::ring::{RingPeer, StreamConsumer};
use super::stream;
use super::sys::die_with_parent;
use super::wake::WakePeer;
use super::{CaseSpec, IpcPeerArgs, Mechanism, PeerCase, PeerSetup, SetupError};

/// The peer never stops on its own: the driver's death kills it.
static NEVER: Stop = Stop::new();

/// Runs the peer until the driver says Shutdown (or goes away: an error).
pub fn run_peer(args: &IpcPeerArgs) -> anyhow::Result<()> {
    die_with_parent(args.driver_pid).context("ipc-peer")?;
    let control = UnixStream::from(
        io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .context("ipc-peer: no stdin")?,
    );
    let pinned = check_cores(&[args.core])
        .and_then(|()| pin_current_thread(args.core))
        .with_context(|| format!("ipc-peer: pinning to core {}", args.core));
    if let Err(e) = pinned {
        let _ = control::send(&control, Frame::Failed { case: NO_CASE });
        return Err(e);
    }
    control::send(
        &control,
        Frame::Hello {
            version: PROTOCOL_VERSION,
            pid: u64::from(std::process::id()),
        },
    )
    .context(
        "ipc-peer: stdin is not the driver's control socket (ipc-peer is started by `bench ipc`)",
    )?;

    let mut board: Option<Arc<ParkBoard>> = None;
    let mut cases: Vec<Option<Box<dyn PeerCase>>> = Vec::new();
    loop {
        let (frame, fds) = match control::recv_with_fds(&control, MAX_SETUP_FDS) {
            Ok(received) => received,
            Err(ControlError::Closed) => bail!("ipc-peer: the driver closed the control socket"),
            Err(e) => return Err(e).context("ipc-peer"),
        };
        match frame {
            Frame::Board { slots } => {
                let [fd]: [OwnedFd; 1] = fds
                    .try_into()
                    .map_err(|_| anyhow!("ipc-peer: the Board frame needs one descriptor"))?;
                let attached = ParkBoard::attach(fd).context("ipc-peer: park board")?;
                if (attached.slots() as u64) < slots {
                    bail!(
                        "ipc-peer: the park board has {} slots, not {slots}",
                        attached.slots()
                    );
                }
                cases.resize_with(attached.slots(), || None);
                board = Some(Arc::new(attached));
                control::send(&control, Frame::BoardOk)?;
            }
            Frame::Setup {
                case,
                mechanism,
                payload,
                arg,
            } => {
                let Some(board) = &board else {
                    let _ = control::send(&control, Frame::Failed { case });
                    bail!("ipc-peer: Setup before the park board");
                };
                let setup = Mechanism::from_code(mechanism)
                    .ok_or(SetupError::UnknownMechanism(mechanism))
                    .and_then(|mechanism| {
                        let payload = usize::try_from(payload)
                            .ok()
                            .filter(|&p| p <= super::msg::MAX_PAYLOAD)
                            .ok_or(SetupError::BadArgument("payload size"))?;
                        if case as usize >= cases.len() {
                            return Err(SetupError::BadArgument(
                                "case index beyond the park board",
                            ));
                        }
                        attach(PeerSetup {
                            case,
                            spec: CaseSpec { mechanism, payload },
                            arg,
                            fds,
                            board: Arc::clone(board),
                        })
                    });
                match setup {
                    Ok((peer_case, ack)) => {
                        cases[case as usize] = Some(peer_case);
                        control::send(&control, Frame::SetupOk { case, arg: ack })?;
                    }
                    Err(e) => {
                        let _ = control::send(&control, Frame::Failed { case });
                        return Err(e).with_context(|| format!("ipc-peer: setting up case {case}"));
                    }
                }
            }
            Frame::Serve { case, count } => {
                let Some(peer_case) = cases.get_mut(case as usize).and_then(Option::as_mut) else {
                    let _ = control::send(&control, Frame::Failed { case });
                    bail!("ipc-peer: Serve for case {case}, which was never set up");
                };
                peer_case.begin_chunk();
                control::send(&control, Frame::Ready { case })?;
                match peer_case.serve(count, &NEVER) {
                    Ok(tally) => control::send(
                        &control,
                        Frame::Done {
                            case,
                            served: count,
                            parks: tally.parks,
                            errors: tally.errors,
                        },
                    )?,
                    Err(e) => {
                        let _ = control::send(&control, Frame::Failed { case });
                        return Err(anyhow!(e)).with_context(|| format!("ipc-peer: case {case}"));
                    }
                }
            }
            Frame::Shutdown => {
                control::send(&control, Frame::Bye)?;
                return Ok(());
            }
            other => bail!("ipc-peer: unexpected control frame {other:?}"),
        }
    }
}

/// Attaches the peer's side of one case; returns it and the argument of
/// the acknowledgement.
fn attach(setup: PeerSetup) -> Result<(Box<dyn PeerCase>, u64), SetupError> {
    let no_ack = |case: Box<dyn PeerCase>| (case, 0);
    Ok(match setup.spec.mechanism {
        Mechanism::AtomicFloor => no_ack(Box::new(FloorPeer::attach(setup)?)),
        Mechanism::RingSpin => no_ack(Box::new(RingPeer::attach(setup, false)?)),
        Mechanism::RingPark => no_ack(Box::new(RingPeer::attach(setup, true)?)),
        Mechanism::Futex => no_ack(Box::new(WakePeer::attach(setup, false)?)),
        Mechanism::Eventfd => no_ack(Box::new(WakePeer::attach(setup, true)?)),
        Mechanism::Pipe => no_ack(stream::attach_pipe(setup)?),
        Mechanism::UnixSocket => no_ack(stream::attach_unix(setup)?),
        Mechanism::TcpLoopback => stream::attach_tcp(setup)?,
        Mechanism::RingStream => no_ack(Box::new(StreamConsumer::attach(setup)?)),
    })
}
