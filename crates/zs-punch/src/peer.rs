//! One side of a direct-path attempt, end to end: ask the router for a port mapping
//! (PCP / NAT-PMP / UPnP-IGD, [`crate::portmap::map_udp_now`]: never waiting for
//! a silent SSDP search) while classifying the NAT with STUN, meet the
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

/// How an attempt's port-mapping step ended.
#[derive(Debug)]
pub enum MapStep {
    /// The router mapped a public port (renewed until dropped or released).
    Mapped(Lease),
    /// No mapping, and the mapping task said why (PCP / NAT-PMP failed; a UPnP-IGD
    /// search still running is not waited for: [`crate::portmap::map_udp_now`]).
    Failed(crate::portmap::PortMapError),
    /// The task did not end within the grace (a silent router); it was stopped.
    Late,
}

/// Waits up to `grace` for `task` (a [`crate::portmap::map_udp_now`] of the punch
/// socket's port, started beside STUN classification).
pub async fn mapping_step(
    cfg: &PortMapConfig,
    mut task: tokio::task::JoinHandle<
        Result<crate::portmap::Mapping, crate::portmap::PortMapError>,
    >,
    grace: std::time::Duration,
) -> MapStep {
    match tokio::time::timeout(grace, &mut task).await {
        Ok(Ok(Ok(m))) => {
            tracing::info!(protocol = %m.protocol, external = %m.external, "port mapping: the router mapped a public port; this side is public");
            MapStep::Mapped(Lease::keep(m, cfg.lifetime, cfg.tries))
        }
        Ok(Ok(Err(e))) => {
            tracing::info!(error = %e, "port mapping: none; punching");
            MapStep::Failed(e)
        }
        Ok(Err(e)) => MapStep::Failed(crate::portmap::PortMapError::Io(std::io::Error::other(
            e.to_string(),
        ))),
        Err(_) => {
            task.abort();
            tracing::info!("port mapping: no answer in time; punching");
            MapStep::Late
        }
    }
}

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
    /// What earlier attempts' UPnP-IGD searches learned: pass the same memory to every
    /// attempt of one owner (a visitor, an agent), so that an IGD a search found after
    /// one attempt maps the next (see [`crate::portmap::map_udp_now`]).
    pub igd_memory: crate::portmap::IgdMemory,
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
        let memory = a.igd_memory.clone();
        (
            cfg,
            tokio::spawn(async move { crate::portmap::map_udp_now(port, &cfg, &memory).await }),
        )
    });
    let nat = classify(&sock, a.stun, a.classify)
        .await
        .map_err(|e| PunchError::Io(std::io::Error::other(e.to_string())));
    let lease = match mapping {
        None => None,
        Some((cfg, task)) => match mapping_step(&cfg, task, PORT_MAPPING_GRACE).await {
            MapStep::Mapped(l) => Some(l),
            MapStep::Failed(_) | MapStep::Late => None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portmap::{map_udp_now, IgdMemory, PortMapError};
    use std::net::Ipv4Addr;
    use std::time::Duration;

    /// A "router" address on loopback with nothing on 5351 (ICMP port unreachable:
    /// PCP and NAT-PMP fail at once) and an SSDP listener that never answers.
    async fn silent_router(last: u8, upnp_wait: Duration) -> (Ipv4Addr, UdpSocket, PortMapConfig) {
        let gateway = Ipv4Addr::new(127, 0, 0, last);
        let ssdp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let cfg = PortMapConfig {
            gateway: Some(gateway),
            lifetime: Duration::from_secs(60),
            tries: 1,
            only: None,
            upnp_wait,
            ssdp: ssdp.local_addr().unwrap(),
        };
        (gateway, ssdp, cfg)
    }

    /// Where no router answers SSDP (multicast gets no ICMP error), the mapping step
    /// ends as soon as PCP and NAT-PMP failed (port unreachable): it does not wait
    /// for the search. The search's wait and the step's grace are set far longer
    /// than anything here takes, so the outcome (`Failed`, and the search not over
    /// yet) does not depend on the machine's speed; before the fix the step waited
    /// for the search and ended `Late`.
    #[tokio::test]
    async fn a_silent_ssdp_search_does_not_hold_the_attempt() {
        let (gateway, ssdp, cfg) = silent_router(7, Duration::from_secs(120)).await;
        let memory = IgdMemory::new();
        let m = memory.clone();
        let task = tokio::spawn(async move { map_udp_now(40000, &cfg, &m).await });
        let step = mapping_step(&cfg, task, Duration::from_secs(60)).await;
        assert!(
            matches!(step, MapStep::Failed(PortMapError::NoAnswer(_))),
            "{step:?}"
        );
        // The search was sent, and is still waiting: nothing is recorded yet.
        let mut buf = [0u8; 1500];
        let (n, _) = tokio::time::timeout(Duration::from_secs(30), ssdp.recv_from(&mut buf))
            .await
            .expect("the M-SEARCH was sent")
            .unwrap();
        assert!(buf[..n].starts_with(b"M-SEARCH"));
        assert_eq!(memory.known(gateway, cfg.ssdp), None);
    }

    /// A search that ended without an answer is remembered per gateway: the next
    /// attempt with the same memory sends none for `NO_IGD_MEMORY`; another owner's
    /// memory does not know it.
    #[tokio::test]
    async fn no_igd_is_remembered_and_not_searched_again() {
        let (gateway, ssdp, cfg) = silent_router(8, Duration::from_millis(100)).await;
        let memory = IgdMemory::new();
        let e = map_udp_now(40000, &cfg, &memory).await.unwrap_err();
        assert!(matches!(e, PortMapError::NoAnswer(_)), "{e}");
        let mut buf = [0u8; 1500];
        ssdp.recv_from(&mut buf).await.unwrap();
        // The background search records its end (guard only: 100 ms wait + 2 s).
        let t = std::time::Instant::now();
        while memory.known(gateway, cfg.ssdp).is_none() {
            assert!(t.elapsed() < Duration::from_secs(30), "search never ended");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(memory.known(gateway, cfg.ssdp), Some(false));
        assert_eq!(memory.searches(gateway, cfg.ssdp), 1);
        let e = map_udp_now(40000, &cfg, &memory).await.unwrap_err();
        assert!(matches!(e, PortMapError::NoAnswer(_)), "{e}");
        assert_eq!(
            memory.searches(gateway, cfg.ssdp),
            1,
            "a search was sent although no IGD answered a moment ago"
        );
        // Another owner's memory knows nothing of it: its attempt searches. (A
        // process-wide memory let one namespace's "no IGD" silence another's search,
        // since namespace inodes are reused: the cause of session 11's flaky
        // `visit_lab::hard_hard_gets_direct_once_the_visitors_igd_answers`.)
        let other = IgdMemory::new();
        assert_eq!(other.known(gateway, cfg.ssdp), None);
        let e = map_udp_now(40000, &cfg, &other).await.unwrap_err();
        assert!(matches!(e, PortMapError::NoAnswer(_)), "{e}");
        let (n, _) = tokio::time::timeout(Duration::from_secs(30), ssdp.recv_from(&mut buf))
            .await
            .expect("the other owner searched")
            .unwrap();
        assert!(buf[..n].starts_with(b"M-SEARCH"));
        assert_eq!(other.searches(gateway, cfg.ssdp), 1);
        assert_eq!(memory.searches(gateway, cfg.ssdp), 1);
    }
}
