//! QUIC on the punched socket (quinn, rustls 0.23 with ring), both ends authenticated
//! by pinned key fingerprints, carrying TCP connections as QUIC streams.
//!
//! Identity: an Ed25519 key; its fingerprint is SHA3-256 of the raw public key (the
//! format of `zs_crypto::hash::Fingerprint`, as the tunnel pins its relay). The peer
//! presents a self-signed certificate for that key; we accept it only if the key's
//! fingerprint is the pinned one and its TLS 1.3 signature verifies (mutual: the agent
//! pins the visitor too). No CA, no names.
//!
//! Streams: the visitor opens one bidirectional stream per accepted TCP connection and
//! writes [`STREAM_MAGIC`] first; the agent checks it, connects to its service and copies
//! both ways, half-closes propagated. At most [`QuicLimits::max_streams`] streams at
//! once per connection (QUIC flow control refuses more).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// ALPN of the punched transport.
pub const ALPN: &[u8] = b"zs-punch/1";
/// First bytes of every stream (a stream is only seen by the agent once bytes flow).
pub const STREAM_MAGIC: &[u8; 4] = b"ZSP1";
const SPKI_ED25519_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Errors of the QUIC layer.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// Socket error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Key or certificate problem.
    #[error("identity: {0}")]
    Identity(String),
    /// TLS configuration.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// Connecting failed (handshake, pinning, timeout).
    #[error("connect: {0}")]
    Connect(String),
}

/// An Ed25519 identity with its self-signed certificate.
pub struct Identity {
    pkcs8: Vec<u8>,
    cert: CertificateDer<'static>,
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Identity({})",
            zs_crypto::hash::to_hex(&self.fingerprint)
        )
    }
}

impl Identity {
    /// A fresh key.
    pub fn generate() -> Result<Identity, QuicError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| QuicError::Identity("key generation failed".into()))?;
        Identity::from_pkcs8(pkcs8.as_ref())
    }

    /// From a PKCS#8 Ed25519 key (as stored by the agent).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Identity, QuicError> {
        let kp = rcgen::KeyPair::try_from(pkcs8).map_err(|e| QuicError::Identity(e.to_string()))?;
        let params = rcgen::CertificateParams::new(vec!["zs-punch".to_string()])
            .map_err(|e| QuicError::Identity(e.to_string()))?;
        let cert = params
            .self_signed(&kp)
            .map_err(|e| QuicError::Identity(e.to_string()))?;
        let cert = cert.der().clone();
        let fingerprint = cert_fingerprint(&cert)
            .ok_or_else(|| QuicError::Identity("no Ed25519 key in our certificate".into()))?;
        Ok(Identity {
            pkcs8: pkcs8.to_vec(),
            cert,
            fingerprint,
        })
    }

    /// SHA3-256 of the raw public key.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pkcs8.clone()))
    }
}

/// The fingerprint of the Ed25519 key in a certificate (exactly one Ed25519 SPKI).
pub fn cert_fingerprint(cert: &[u8]) -> Option<[u8; 32]> {
    let mut found = None;
    let mut i = 0;
    while i + SPKI_ED25519_PREFIX.len() + 32 <= cert.len() {
        if cert[i..i + 12] == SPKI_ED25519_PREFIX {
            if found.is_some() {
                return None;
            }
            found = Some(zs_crypto::hash::sha3_256(&cert[i + 12..i + 44]));
            i += 44;
        } else {
            i += 1;
        }
    }
    found
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug)]
struct Pinned {
    fingerprint: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl Pinned {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        match cert_fingerprint(cert) {
            Some(f) if f == self.fingerprint => Ok(()),
            _ => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }
    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(&self.provider, message, cert, dss)
    }
}

// What both verifiers (server certificate, client certificate) share.

/// QUIC is TLS 1.3 only: a TLS 1.2 signature is refused.
fn refuse_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls13RequiredForQuic,
    ))
}

/// The TLS 1.3 handshake signature, checked with the provider's algorithms.
fn verify_tls13(
    provider: &rustls::crypto::CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

/// Our keys are Ed25519 only.
fn schemes() -> Vec<SignatureScheme> {
    vec![SignatureScheme::ED25519]
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|_| ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _m: &[u8],
        _c: &CertificateDer<'_>,
        _d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        refuse_tls12()
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|_| ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _m: &[u8],
        _c: &CertificateDer<'_>,
        _d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        refuse_tls12()
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

/// Per-connection bounds.
#[derive(Debug, Clone, Copy)]
pub struct QuicLimits {
    /// Concurrent streams (TCP connections) per QUIC connection.
    pub max_streams: u32,
    /// Idle timeout of the QUIC connection.
    pub idle_timeout: Duration,
    /// Keep-alive interval (keeps the NAT mappings open).
    pub keep_alive: Duration,
    /// Handshake deadline.
    pub handshake_timeout: Duration,
}

impl Default for QuicLimits {
    fn default() -> Self {
        QuicLimits {
            max_streams: 256,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

fn transport(l: &QuicLimits) -> Result<Arc<quinn::TransportConfig>, QuicError> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(l.max_streams));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.keep_alive_interval(Some(l.keep_alive));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(l.idle_timeout)
            .map_err(|e| QuicError::Connect(e.to_string()))?,
    ));
    Ok(Arc::new(t))
}

fn endpoint(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
) -> Result<quinn::Endpoint, QuicError> {
    socket.set_nonblocking(true)?;
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?)
}

/// Agent side: accept one QUIC connection on the punched socket from the peer whose
/// fingerprint is `peer`. Returns the endpoint (keep it alive) and the connection.
pub async fn accept(
    socket: std::net::UdpSocket,
    me: &Identity,
    peer: [u8; 32],
    limits: QuicLimits,
) -> Result<(quinn::Endpoint, quinn::Connection), QuicError> {
    let pinned = Arc::new(Pinned {
        fingerprint: peer,
        provider: provider(),
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(pinned)
        .with_single_cert(vec![me.cert.clone()], me.key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| QuicError::Connect(e.to_string()))?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    sc.transport_config(transport(&limits)?);
    let ep = endpoint(socket, Some(sc))?;
    let conn = tokio::time::timeout(limits.handshake_timeout, async {
        loop {
            let inc = ep
                .accept()
                .await
                .ok_or_else(|| QuicError::Connect("endpoint closed".into()))?;
            match inc.await {
                Ok(c) => return Ok::<_, QuicError>(c),
                // A stranger (wrong key) fails its handshake; keep waiting for the peer.
                Err(e) => tracing::info!("punched QUIC: refused a handshake: {e}"),
            }
        }
    })
    .await
    .map_err(|_| QuicError::Connect("no authenticated handshake in time".into()))??;
    Ok((ep, conn))
}

/// Visitor side: connect over the punched socket to `addr`, pinning `peer`.
pub async fn connect(
    socket: std::net::UdpSocket,
    addr: SocketAddr,
    me: &Identity,
    peer: [u8; 32],
    limits: QuicLimits,
) -> Result<(quinn::Endpoint, quinn::Connection), QuicError> {
    let pinned = Arc::new(Pinned {
        fingerprint: peer,
        provider: provider(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(pinned)
        .with_client_auth_cert(vec![me.cert.clone()], me.key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| QuicError::Connect(e.to_string()))?;
    let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
    cc.transport_config(transport(&limits)?);
    let ep = endpoint(socket, None)?;
    let connecting = ep
        .connect_with(cc, addr, "zs-punch")
        .map_err(|e| QuicError::Connect(e.to_string()))?;
    let conn = tokio::time::timeout(limits.handshake_timeout, connecting)
        .await
        .map_err(|_| QuicError::Connect("handshake timed out".into()))?
        .map_err(|e| QuicError::Connect(e.to_string()))?;
    Ok((ep, conn))
}

/// Opens the agent's TCP connection to its service (lets the caller choose the
/// namespace, the address, a Unix-socket bridge…).
pub type Connector =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send>> + Send + Sync>;

/// A connector to a fixed TCP address.
pub fn tcp_connector(addr: SocketAddr) -> Connector {
    Arc::new(move || Box::pin(TcpStream::connect(addr)))
}

/// Agent: serve the connection's streams until it closes; each goes to a fresh TCP
/// connection from `connect`. Returns the number of streams served.
pub async fn serve_agent(conn: quinn::Connection, connect: Connector) -> u64 {
    let mut n = 0;
    let mut tasks = tokio::task::JoinSet::new();
    while let Ok((send, mut recv)) = conn.accept_bi().await {
        n += 1;
        let connect = Arc::clone(&connect);
        tasks.spawn(async move {
            let mut magic = [0u8; 4];
            let ok = tokio::time::timeout(Duration::from_secs(10), recv.read_exact(&mut magic))
                .await
                .is_ok_and(|r| r.is_ok());
            if !ok || &magic != STREAM_MAGIC {
                tracing::info!("punched QUIC: stream without the magic, reset");
                let mut send = send;
                let _ = send.reset(quinn::VarInt::from_u32(1));
                return;
            }
            match connect().await {
                Ok(tcp) => pump(tcp, send, recv).await,
                Err(e) => {
                    tracing::info!("punched QUIC: service connect failed: {e}");
                    let mut send = send;
                    let _ = send.reset(quinn::VarInt::from_u32(2));
                }
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    n
}

/// Visitor: each TCP connection accepted on `listener` rides a new stream of `conn`.
/// Runs until the connection closes (then the listener is dropped).
pub async fn serve_visitor(listener: TcpListener, conn: quinn::Connection) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            acc = listener.accept() => {
                let Ok((tcp, _)) = acc else { continue };
                let conn = conn.clone();
                tasks.spawn(async move {
                    match conn.open_bi().await {
                        Ok((mut send, recv)) => {
                            if send.write_all(STREAM_MAGIC).await.is_ok() {
                                pump(tcp, send, recv).await;
                            }
                        }
                        Err(e) => tracing::info!("punched QUIC: open stream: {e}"),
                    }
                });
            }
            _ = conn.closed() => break,
        }
        while tasks.try_join_next().is_some() {}
    }
    tasks.shutdown().await;
}

/// Copy buffer per direction: fewer, larger stream writes than tokio's 8 KiB `copy`
/// (each write into quinn takes its connection lock and wakes its driver).
const PUMP_BUF: usize = 64 * 1024;

/// Copy TCP ⇄ QUIC stream until both directions end.
async fn pump(tcp: TcpStream, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    use tokio::io::AsyncReadExt;
    let (mut tr, mut tw) = tcp.into_split();
    let up = async {
        let mut buf = vec![0u8; PUMP_BUF];
        loop {
            match tr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if send.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = send.finish();
    };
    let down = async {
        // `read` gathers several received chunks (one per ~1.2 KB packet) per TCP write.
        let mut buf = vec![0u8; PUMP_BUF];
        while let Ok(Some(n)) = recv.read(&mut buf).await {
            if tw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = tw.shutdown().await;
    };
    tokio::join!(up, down);
    // Let the peer read everything we finished before the stream is dropped.
    let _ = send.stopped().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn fingerprint_is_sha3_of_the_raw_key() {
        let rng = ring::rand::SystemRandom::new();
        let pk8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let kp = ring::signature::Ed25519KeyPair::from_pkcs8(pk8.as_ref()).unwrap();
        use ring::signature::KeyPair;
        let id = Identity::from_pkcs8(pk8.as_ref()).unwrap();
        assert_eq!(
            id.fingerprint(),
            zs_crypto::hash::Fingerprint::of_public_key(kp.public_key().as_ref()).0
        );
    }

    fn pair() -> (std::net::UdpSocket, std::net::UdpSocket) {
        (
            std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
            std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
        )
    }

    /// Mutual pinning on loopback: right keys connect and carry a TCP connection end to
    /// end; a visitor pinning the wrong agent key fails, and so does a visitor whose key
    /// the agent does not pin.
    #[tokio::test]
    async fn pinned_both_ways_and_carries_tcp() {
        let agent = Identity::generate().unwrap();
        let visitor = Identity::generate().unwrap();
        let stranger = Identity::generate().unwrap();
        let l = QuicLimits {
            handshake_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        // Wrong agent key pinned by the visitor.
        let (a, v) = pair();
        let aa = a.local_addr().unwrap();
        let vf = visitor.fingerprint();
        let sf = stranger.fingerprint();
        let acc = tokio::spawn(async move {
            let agent = Identity::from_pkcs8(&Identity::generate().unwrap().pkcs8).unwrap();
            accept(a, &agent, vf, l).await.map(|_| ())
        });
        assert!(connect(v, aa, &visitor, sf, l).await.is_err());
        acc.abort();

        // The agent pins someone else: the handshake fails.
        let (a, v) = pair();
        let aa = a.local_addr().unwrap();
        let af = agent.fingerprint();
        let agent2 = Identity::from_pkcs8(&agent.pkcs8).unwrap();
        let acc = tokio::spawn(async move { accept(a, &agent2, sf, l).await.map(|_| ()) });
        let r = connect(v, aa, &visitor, af, l).await;
        if let Ok((_ep, c)) = r {
            // TLS 1.3: the client may finish before the server rejects its certificate.
            let e = c.closed().await;
            assert!(
                matches!(e, quinn::ConnectionError::ConnectionClosed(_)),
                "{e:?}"
            );
        }
        assert!(acc.await.unwrap().is_err());

        // Right keys: a TCP service behind the agent, a local port at the visitor.
        let service = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let saddr = service.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = service.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let (a, v) = pair();
        let aa = a.local_addr().unwrap();
        let agent2 = Identity::from_pkcs8(&agent.pkcs8).unwrap();
        let acc = tokio::spawn(async move { accept(a, &agent2, vf, l).await });
        let (_vep, vc) = connect(v, aa, &visitor, af, l).await.unwrap();
        let (_aep, ac) = acc.await.unwrap().unwrap();
        tokio::spawn(serve_agent(ac, tcp_connector(saddr)));
        let local = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let laddr = local.local_addr().unwrap();
        tokio::spawn(serve_visitor(local, vc));
        let mut c = TcpStream::connect(laddr).await.unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let (mut r, mut w) = c.split();
        let send = async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut back = Vec::new();
        let recv = r.read_to_end(&mut back);
        let (_, got) = tokio::join!(send, recv);
        got.unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn cert_fingerprint_needs_exactly_one_key() {
        let id = Identity::generate().unwrap();
        assert_eq!(cert_fingerprint(&id.cert), Some(id.fingerprint()));
        let mut two = id.cert.to_vec();
        two.extend_from_slice(&id.cert);
        assert_eq!(cert_fingerprint(&two), None);
        assert_eq!(cert_fingerprint(b"nothing"), None);
    }
}
