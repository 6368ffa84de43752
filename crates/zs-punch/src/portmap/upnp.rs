//! UPnP-IGD port mapping (the third method, after PCP and NAT-PMP).
//!
//! Spoken through the `igd-next` crate's tokio API: an SSDP `M-SEARCH` to
//! 239.255.255.250:1900 finds the router's device description (HTTP `GET`), whose
//! `WANIPConnection` / `WANPPPConnection` service gets SOAP `POST`s:
//! `GetExternalIPAddress`, `AddPortMapping` (UDP, our port, a lease in seconds), the
//! same `AddPortMapping` again to renew, `DeletePortMapping` to delete. igd-next
//! reads at most 64 KiB of any HTTP body before parsing XML and accepts device and
//! control URLs only on the address that answered SSDP; on top of that:
//!
//! - only the default gateway (or the configured one) is believed: an answer from any
//!   other host of the LAN is an error, since a mapping there maps nothing of ours;
//! - every exchange has our own deadline ([`PortMapConfig::upnp_wait`](super::PortMapConfig::upnp_wait) for the
//!   search, [`REQUEST_TIMEOUT`] per SOAP call), whatever the router does;
//! - the granted lease is taken to be the requested one (IGD v1 has no way to read
//!   it back in the answer); the lease renews at half of it, as for PCP.
//!
//! Byte exchange: `docs/PROTOCOL.md` Part 15, "UPnP-IGD".

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use igd_next::aio::tokio::Tokio;
use igd_next::{AddAnyPortError, AddPortError, PortMappingProtocol, SearchOptions};

use super::{Mapping, PortMapError, Protocol};

/// The SSDP multicast group and port.
pub const SSDP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(239, 255, 255, 250)), 1900);

/// Deadline of one SOAP call (the router is on the LAN).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// What `AddPortMapping` names the mapping (routers show it to their users).
pub const DESCRIPTION: &str = "zserver direct path";

/// A router's Internet Gateway Device, as SSDP found it.
#[derive(Clone)]
pub struct Igd(Arc<igd_next::aio::Gateway<Tokio>>);

impl Igd {
    /// The address that answered SSDP (the router's HTTP server).
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// The WAN connection service's control URL.
    pub fn control_url(&self) -> &str {
        &self.0.control_url
    }
}

impl std::fmt::Debug for Igd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Igd(http://{}{})", self.0.addr, self.0.control_url)
    }
}

impl PartialEq for Igd {
    fn eq(&self, o: &Igd) -> bool {
        self.0.addr == o.0.addr
            && self.0.control_url == o.0.control_url
            && self.0.service_type == o.0.service_type
    }
}
impl Eq for Igd {}

fn err(what: &str, e: impl std::fmt::Display) -> PortMapError {
    PortMapError::Upnp(format!("{what}: {e}"))
}

async fn within<T>(
    d: Duration,
    what: &str,
    f: impl std::future::Future<Output = T>,
) -> Result<T, PortMapError> {
    tokio::time::timeout(d, f)
        .await
        .map_err(|_| PortMapError::Upnp(format!("{what}: no answer in {} ms", d.as_millis())))
}

/// Finds the IGD by SSDP (`ssdp`: where the M-SEARCH goes, normally [`SSDP`]) and
/// accepts it only if it is `gateway`.
pub async fn discover(
    gateway: Ipv4Addr,
    ssdp: SocketAddr,
    wait: Duration,
) -> Result<Igd, PortMapError> {
    let mut opts = SearchOptions::default();
    opts.bind_addr = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0);
    opts.broadcast_address = ssdp;
    opts.timeout = Some(wait);
    opts.single_search_timeout = Some(wait);
    // igd-next's own timeout covers the SSDP wait; ours also covers the HTTP GETs.
    let g = within(
        wait + REQUEST_TIMEOUT,
        "SSDP search",
        igd_next::aio::tokio::search_gateway(opts),
    )
    .await?
    .map_err(|e| err("SSDP search", e))?;
    if g.addr.ip() != IpAddr::V4(gateway) {
        return Err(PortMapError::Garbage {
            protocol: Protocol::Upnp,
            why: "the device that answered SSDP is not the gateway",
        });
    }
    Ok(Igd(Arc::new(g)))
}

/// Maps UDP `internal` (our address as the router sees it) on the router, asking for
/// external port `suggested` first and any port if that one is taken.
pub async fn map(
    igd: &Igd,
    gateway: Ipv4Addr,
    internal: SocketAddr,
    suggested: u16,
    lifetime: u32,
) -> Result<Mapping, PortMapError> {
    let g = &igd.0;
    let ip = within(REQUEST_TIMEOUT, "GetExternalIPAddress", g.get_external_ip())
        .await?
        .map_err(|e| err("GetExternalIPAddress", e))?;
    let ip = match ip {
        IpAddr::V4(v) if !v.is_unspecified() => v,
        _ => {
            return Err(PortMapError::Garbage {
                protocol: Protocol::Upnp,
                why: "no usable external IPv4 address",
            })
        }
    };
    let udp = PortMappingProtocol::UDP;
    let add = g.add_port(udp, suggested.max(1), internal, lifetime, DESCRIPTION);
    let port = match within(REQUEST_TIMEOUT, "AddPortMapping", add).await? {
        Ok(()) => suggested.max(1),
        Err(AddPortError::PortInUse | AddPortError::SamePortValuesRequired) => {
            let any = g.add_any_port(udp, internal, lifetime, DESCRIPTION);
            match within(REQUEST_TIMEOUT * 4, "AddAnyPortMapping", any).await? {
                Ok(p) => p,
                Err(AddAnyPortError::ActionNotAuthorized) => return Err(refused()),
                Err(e) => return Err(err("AddAnyPortMapping", e)),
            }
        }
        Err(AddPortError::ActionNotAuthorized) => return Err(refused()),
        Err(e) => return Err(err("AddPortMapping", e)),
    };
    Ok(Mapping {
        protocol: Protocol::Upnp,
        gateway,
        internal,
        external: SocketAddr::new(ip.into(), port),
        lifetime: Duration::from_secs(u64::from(lifetime)),
        nonce: [0; 12],
        igd: Some(igd.clone()),
    })
}

fn refused() -> PortMapError {
    PortMapError::Refused {
        protocol: Protocol::Upnp,
        code: 606,
        meaning: "action not authorized",
    }
}

/// Deletes the mapping of external UDP port `external`.
pub async fn delete(igd: &Igd, external: u16) -> Result<(), PortMapError> {
    within(
        REQUEST_TIMEOUT,
        "DeletePortMapping",
        igd.0.remove_port(PortMappingProtocol::UDP, external),
    )
    .await?
    .map_err(|e| err("DeletePortMapping", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What the fake router's HTTP server does with the description request.
    #[derive(Clone, Copy)]
    enum Http {
        Garbage,
        Huge,
        Silent,
        NotXml,
    }

    /// An SSDP responder on loopback whose LOCATION points at an HTTP server that
    /// misbehaves as told. Returns where to send the M-SEARCH.
    async fn hostile_router(how: Http) -> SocketAddr {
        hostile_router_seeing(how, None).await
    }

    /// [`hostile_router`], passing on every M-SEARCH it receives.
    async fn hostile_router_seeing(
        how: Http,
        seen: Option<tokio::sync::mpsc::UnboundedSender<Vec<u8>>>,
    ) -> SocketAddr {
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hport = http.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = http.accept().await {
                tokio::spawn(async move {
                    let mut req = [0u8; 2048];
                    let _ = c.read(&mut req).await;
                    match how {
                        Http::Garbage => {
                            let _ = c.write_all(b"\x00\xff garbage \r\n\r\n\x01").await;
                        }
                        Http::Huge => {
                            let _ = c
                                .write_all(
                                    b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n\r\n<root>",
                                )
                                .await;
                            let chunk = vec![b'a'; 64 * 1024];
                            // 16 MiB unless the reader stops first (it must).
                            for _ in 0..256 {
                                if c.write_all(&chunk).await.is_err() {
                                    break;
                                }
                            }
                        }
                        Http::Silent => {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                        }
                        Http::NotXml => {
                            let body = "<root><device><serviceList><service>";
                            let _ = c
                                .write_all(
                                    format!(
                                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                                        body.len()
                                    )
                                    .as_bytes(),
                                )
                                .await;
                        }
                    }
                });
            }
        });
        let ssdp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = ssdp.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = ssdp.recv_from(&mut buf).await {
                if let Some(s) = &seen {
                    let _ = s.send(buf[..n].to_vec());
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\n\
                     ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\
                     USN: uuid:x::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\
                     LOCATION: http://127.0.0.1:{hport}/rootDesc.xml\r\n\r\n"
                );
                let _ = ssdp.send_to(answer.as_bytes(), from).await;
            }
        });
        addr
    }

    /// A router whose description is garbage, endless, never sent or broken XML:
    /// an error within the search wait plus one request deadline, never a panic or a
    /// hang (and the endless body is not read to its end).
    #[tokio::test]
    async fn a_hostile_igd_is_an_error_in_bounded_time() {
        for how in [Http::Garbage, Http::Huge, Http::Silent, Http::NotXml] {
            let ssdp = hostile_router(how).await;
            let wait = Duration::from_millis(300);
            let t = std::time::Instant::now();
            let r = discover(Ipv4Addr::LOCALHOST, ssdp, wait).await;
            assert!(r.is_err(), "{r:?}");
            assert!(
                t.elapsed() < wait + REQUEST_TIMEOUT + Duration::from_secs(2),
                "{:?}",
                t.elapsed()
            );
        }
    }

    /// The first M-SEARCH is PROTOCOL.md Part 15's block `ssdp-m-search` (lines
    /// joined by CR LF, an empty line at the end), with the Host line naming where
    /// the search went.
    #[tokio::test]
    async fn ssdp_search_is_as_documented() {
        let doc = include_str!("../../../../docs/PROTOCOL.md");
        let fence = "```text ssdp-m-search\n";
        let at = doc.find(fence).expect("ssdp-m-search block") + fence.len();
        let block = &doc[at..];
        let block = &block[..block.find("```").expect("end of block")];
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let ssdp = hostile_router_seeing(Http::Garbage, Some(tx)).await;
        let _ = discover(Ipv4Addr::LOCALHOST, ssdp, Duration::from_millis(300)).await;
        let mut want = String::new();
        for line in block.lines() {
            want.push_str(&line.replace("239.255.255.250:1900", &ssdp.to_string()));
            want.push_str("\r\n");
        }
        want.push_str("\r\n");
        let mut got = Vec::new();
        while let Ok(d) = rx.try_recv() {
            got.push(String::from_utf8(d).unwrap());
        }
        assert!(got.contains(&want), "{want:?} not among {got:?}");
    }

    /// Nobody answers the M-SEARCH: an error after the wait.
    #[tokio::test]
    async fn no_igd_is_an_error_after_the_wait() {
        let quiet = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let r = discover(
            Ipv4Addr::LOCALHOST,
            quiet.local_addr().unwrap(),
            Duration::from_millis(200),
        )
        .await;
        assert!(matches!(r, Err(PortMapError::Upnp(_))), "{r:?}");
    }
}
