//! One side of a direct-path attempt, end to end: ask the router for a port mapping
//! (PCP / NAT-PMP, [`crate::portmap`]) while classifying the NAT with STUN, meet the
//! peer at the rendezvous (as a public side when a port was mapped), punch, report.

use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UdpSocket;

use crate::portmap::{Lease, PortMapConfig};
use crate::punch::{execute, NatInfo, Plan, PunchConfig, PunchError, Punched, SocketFactory};
use crate::rendezvous::{report, request_plan, Hello, Outcome, Side};
use crate::stun::{classify, ClassifyOptions, Mapping, NatReport, PortPattern};

/// How long an attempt waits for the router's port mapping once STUN classification
/// is done (the mapping runs alongside it); a later answer is not waited for.
pub const PORT_MAPPING_GRACE: std::time::Duration = std::time::Duration::from_millis(300);

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
    /// Ask the default gateway for a public port (PCP, then NAT-PMP) before punching;
    /// `None`: do not (nor when the STUN server is on loopback: peers on this host).
    pub port_mapping: Option<PortMapConfig>,
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
    /// The router's port mapping of the socket, when one was granted: keep it as long
    /// as the path is used (it renews itself), release it after.
    pub mapping: Option<Lease>,
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
    let port = sock.local_addr().map_err(PunchError::Io)?.port();
    // A STUN server on loopback means peers on this host: no router to ask.
    let port_mapping = a.port_mapping.filter(|_| !a.stun.ip().is_loopback());
    let mapping = port_mapping.map(|cfg| {
        (
            cfg,
            tokio::spawn(async move { crate::portmap::map_udp(port, &cfg).await }),
        )
    });
    let nat = classify(&sock, a.stun, a.classify)
        .await
        .map_err(|e| PunchError::Io(std::io::Error::other(e.to_string())));
    let lease = match mapping {
        None => None,
        Some((cfg, mut task)) => match tokio::time::timeout(PORT_MAPPING_GRACE, &mut task).await {
            Ok(Ok(Ok(m))) => {
                tracing::info!(protocol = %m.protocol, external = %m.external, "port mapping: the router mapped a public port; this side is public");
                Some(Lease::keep(m, cfg.lifetime, cfg.tries))
            }
            Ok(Ok(Err(e))) => {
                tracing::info!(error = %e, "port mapping: none; punching");
                None
            }
            Ok(Err(_)) => None,
            Err(_) => {
                task.abort();
                tracing::info!("port mapping: no answer in time; punching");
                None
            }
        },
    };
    let nat = nat?;
    let mut info = NatInfo::from_report(&nat);
    if let Some(l) = &lease {
        // Reachable at the mapped address from anywhere: public, stable.
        let ext = l.mapping().external;
        info = NatInfo {
            mapping: Mapping::Public,
            ports: PortPattern::Stable,
            mapped: ext,
            last: ext,
        };
    }
    let hello = Hello {
        side: a.side,
        pair_key: a.pair_key,
        fingerprint: a.fingerprint,
        nat: info,
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
    Ok(AttemptResult {
        nat,
        plan,
        path,
        mapping: lease,
    })
}
