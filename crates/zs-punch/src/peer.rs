//! One side of a direct-path attempt, end to end: classify the NAT with STUN, meet the
//! peer at the rendezvous, punch, report.

use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UdpSocket;

use crate::punch::{execute, NatInfo, Plan, PunchConfig, PunchError, Punched, SocketFactory};
use crate::rendezvous::{report, request_plan, Hello, Outcome, Side};
use crate::stun::{classify, ClassifyOptions, NatReport};

/// What a side needs for an attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Agent or visitor.
    pub side: Side,
    /// [`crate::rendezvous::pair_key`] of the service and its token.
    pub pair_key: [u8; 32],
    /// Our QUIC key fingerprint (the peer pins it).
    pub fingerprint: [u8; 32],
    /// An RFC 5780 STUN server (primary address).
    pub stun: SocketAddr,
    /// Bounds of the attempt.
    pub punch: PunchConfig,
    /// STUN client options.
    pub classify: ClassifyOptions,
}

/// The outcome of [`run_attempt`]: the classification, the plan, and the punched path
/// (or why there is none).
#[derive(Debug)]
pub struct AttemptResult {
    /// Our NAT as classified.
    pub nat: NatReport,
    /// What the rendezvous decided.
    pub plan: Plan,
    /// The path, or the reason there is none (then use the relay).
    pub path: Result<Punched, PunchError>,
}

/// Classify `sock`'s NAT, send HELLO over `rendezvous`, run the plan and report.
/// `sock` must not have sent anything the NAT could remember towards the peer.
pub async fn run_attempt<S>(
    a: &Attempt,
    sock: UdpSocket,
    rendezvous: &mut S,
    factory: &SocketFactory,
) -> Result<AttemptResult, PunchError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let nat = classify(&sock, a.stun, a.classify)
        .await
        .map_err(|e| PunchError::Io(std::io::Error::other(e.to_string())))?;
    let hello = Hello {
        side: a.side,
        pair_key: a.pair_key,
        fingerprint: a.fingerprint,
        nat: NatInfo::from_report(&nat),
    };
    let plan = request_plan(rendezvous, hello).await?;
    let t = Instant::now();
    let path = execute(&plan, sock, factory, &a.punch).await;
    let elapsed_ms = match &path {
        Ok(p) => p.elapsed.as_millis(),
        Err(_) => t.elapsed().as_millis(),
    };
    // A lost report only costs the hub's memory of this attempt.
    let _ = report(
        rendezvous,
        Outcome {
            attempt: plan.attempt,
            ok: path.is_ok(),
            elapsed_ms: u32::try_from(elapsed_ms).unwrap_or(u32::MAX),
        },
    )
    .await;
    Ok(AttemptResult { nat, plan, path })
}
