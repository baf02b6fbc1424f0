//! Client connections the bench opens: TLS WebSocket (any [`Wire`]) or
//! WebTransport datagrams (prscd only), with client source addresses spread
//! over 127.0.0.x so one machine can hold more than one address's worth of
//! ephemeral ports. The WebSocket framing is the tool's own ([`WsClient`]).
//!
//! TLS: the client accepts ANY server certificate and handshake signature
//! ([`AcceptAnyCert`]). That is for benchmarking a node on loopback only;
//! never point it at a network you do not control.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

use crate::wire::Wire;
use crate::ws::WsClient;
use tokio_util::either::Either;

/// `wss://host:port/path` (or plain `ws://`), split.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub path: String,
    /// `false` for `ws://`: WebSocket without TLS (comparison servers only).
    pub tls: bool,
}

impl Endpoint {
    pub fn parse(url: &str) -> anyhow::Result<Endpoint> {
        let (tls, rest) = if let Some(rest) = url
            .strip_prefix("wss://")
            .or_else(|| url.strip_prefix("https://"))
        {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("ws://") {
            (false, rest)
        } else {
            bail!("the URL must start with wss:// (or https://, or ws:// without TLS)");
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/v1"),
        };
        if path.contains('?') {
            bail!("the URL must not carry a query: the tool adds its own");
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().context("bad port in the URL")?),
            None => (authority.to_owned(), if tls { 443 } else { 80 }),
        };
        Ok(Endpoint {
            host,
            port,
            path: path.to_owned(),
            tls,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Ws,
    /// WebTransport session, Signalling in datagrams (prscd only).
    Datagram,
}

/// Opens connections; shared by every client task.
pub struct Dialer {
    tls: TlsConnector,
    /// Client addresses 127.0.0.1 ..= 127.0.0.N, used round robin (1: let
    /// the kernel choose).
    source_ips: u8,
    next: AtomicUsize,
    /// TLS handshakes that resumed a session (with `--tls-resume`).
    pub resumed: AtomicUsize,
    wt_endpoints: Vec<wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client>>,
}

/// One open client connection.
pub enum Conn {
    Ws(Box<WsClient>),
    Wt(wtransport::Connection),
}

impl Dialer {
    pub fn new(source_ips: u8, transport: Transport, tls_resume: bool) -> anyhow::Result<Dialer> {
        let provider = Arc::new(browser_like(
            CryptoProvider::get_default().context("no rustls crypto provider")?,
        ));
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth();
        // rustls resumes by default; a benchmark of new clients must not
        // (a full handshake costs the server ~2x a resumed one).
        if !tls_resume {
            config.resumption = rustls::client::Resumption::disabled();
        }
        // QUIC endpoints each own one UDP socket and its driver task: a few,
        // so a thousand sessions do not all queue on one socket.
        let wt_endpoints = if transport == Transport::Datagram {
            (0..4)
                .map(|_| {
                    let config = wtransport::ClientConfig::builder()
                        .with_bind_default()
                        .with_no_cert_validation()
                        .keep_alive_interval(Some(std::time::Duration::from_secs(3)))
                        .build();
                    wtransport::Endpoint::client(config).context("QUIC client endpoint")
                })
                .collect::<anyhow::Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        Ok(Dialer {
            tls: TlsConnector::from(Arc::new(config)),
            source_ips: source_ips.max(1),
            next: AtomicUsize::new(0),
            resumed: AtomicUsize::new(0),
            wt_endpoints,
        })
    }

    fn next_index(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// TCP + TLS to the endpoint, from the next source address.
    pub async fn tls(
        &self,
        ep: &Endpoint,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = self.tcp(ep).await?;
        let name = ServerName::try_from(ep.host.clone()).context("bad host")?;
        let stream = self.tls.connect(name, tcp).await.context("tls handshake")?;
        if stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            self.resumed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(stream)
    }

    /// TCP to the endpoint, from the next source address.
    async fn tcp(&self, ep: &Endpoint) -> anyhow::Result<TcpStream> {
        let addr: SocketAddr = tokio::net::lookup_host((ep.host.as_str(), ep.port))
            .await?
            .next()
            .context("host did not resolve")?;
        let socket = match addr.ip() {
            IpAddr::V4(_) => TcpSocket::new_v4()?,
            IpAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if self.source_ips > 1 && addr.ip().is_loopback() && addr.is_ipv4() {
            let last = 1 + (self.next_index() % self.source_ips as usize) as u8;
            socket.bind(SocketAddr::new(Ipv4Addr::new(127, 0, 0, last).into(), 0))?;
        }
        let tcp = socket.connect(addr).await.context("tcp connect")?;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }

    /// A WebSocket for client `id` in `room`, handshake done (not joined).
    pub async fn ws(
        &self,
        ep: &Endpoint,
        wire: &dyn Wire,
        id: &str,
        room: &str,
    ) -> anyhow::Result<Conn> {
        let io = if ep.tls {
            Either::Left(self.tls(ep).await?)
        } else {
            Either::Right(self.tcp(ep).await?)
        };
        let host = format!("{}:{}", ep.host, ep.port);
        let ws = WsClient::connect(io, &host, &wire.ws_path(id, room))
            .await
            .context("websocket handshake")?;
        Ok(Conn::Ws(Box::new(ws)))
    }

    /// A WebTransport session to a prscd node (`/v1?publickey=&id=`).
    pub async fn wt(&self, ep: &Endpoint, query: &str) -> anyhow::Result<Conn> {
        let endpoint = &self.wt_endpoints[self.next_index() % self.wt_endpoints.len()];
        let url = format!("https://{}:{}{}?{}", ep.host, ep.port, ep.path, query);
        let conn = endpoint
            .connect(url)
            .await
            .context("webtransport connect")?;
        Ok(Conn::Wt(conn))
    }

    /// `GET path` over TLS, the body (the node's `/health`).
    pub async fn get(&self, ep: &Endpoint, path: &str) -> anyhow::Result<String> {
        let mut tls = self.tls(ep).await?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            ep.host
        );
        tls.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        // The node may close without close_notify: keep what was read.
        let _ = tls.read_to_end(&mut raw).await;
        let text = String::from_utf8_lossy(&raw);
        let (_, body) = text.split_once("\r\n\r\n").context("no HTTP response")?;
        Ok(body.to_owned())
    }
}

impl Conn {
    pub async fn send(&mut self, frames: Vec<Message>) -> anyhow::Result<()> {
        match self {
            Conn::Ws(ws) => ws.send(frames).await?,
            Conn::Wt(c) => {
                for f in frames {
                    c.send_datagram(f.into_data()).context("send datagram")?;
                }
            }
        }
        Ok(())
    }

    /// The next frame; `Ok(None)` when the connection ended.
    pub async fn recv(&mut self) -> anyhow::Result<Option<Message>> {
        match self {
            Conn::Ws(ws) => ws.recv().await,
            Conn::Wt(c) => match c.receive_datagram().await {
                Ok(d) => Ok(Some(Message::Binary(Bytes::copy_from_slice(&d)))),
                Err(e) => bail!("session ended: {e}"),
            },
        }
    }

    pub async fn close(self) {
        match self {
            Conn::Ws(ws) => ws.close().await,
            Conn::Wt(c) => c.close(0u32.into(), b""),
        }
    }
}

/// The provider with its TLS 1.3 suites in a browser's order: Chrome and
/// Firefox offer AES-128-GCM first, and rustls' server follows the client.
fn browser_like(provider: &CryptoProvider) -> CryptoProvider {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    let mut provider = provider.clone();
    let first = [
        TLS13_AES_128_GCM_SHA256,
        TLS13_CHACHA20_POLY1305_SHA256,
        TLS13_AES_256_GCM_SHA384,
    ];
    provider
        .cipher_suites
        .retain(|s| !first.iter().any(|f| f.suite() == s.suite()));
    provider.cipher_suites.splice(0..0, first);
    provider
}

/// Accepts every server certificate and handshake signature. FOR LOOPBACK
/// BENCHMARKING ONLY, as h2load and wrk do: the dev node's certificate is
/// self-signed, and the benchmark measures the server, whose half of every
/// handshake (key share, signature, keys) is unchanged. A browser checks the
/// signature on its own machine; here the check would take, per connection,
/// a fifth of what the node itself spends on a connect+join, on the cores
/// the server shares with the tool (BENCHMARKS-HISTORY.md, fix 19).
#[derive(Debug)]
pub struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
