//! The QUIC endpoint (quinn on async-std) and length-prefixed CBOR frames.
//!
//! One UDP endpoint per instance serves both kinds of traffic, told apart by
//! ALPN: [`ALPN_PEER`] between instances, [`ALPN_CLIENT`] from the CLI. Both
//! directions use mutual TLS against the cluster CA (see `tls`). Which peer a
//! certificate names is checked by the caller with [`peer_cert`] and
//! `tls::cert_is_for`, since only the caller knows who the peer claims to be.
//!
//! A frame is a 4-byte big-endian body length followed by one CBOR value
//! (ciborium). The length is checked against the caller's limit before any
//! buffer is allocated, so a hostile prefix costs nothing.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, EndpointConfig, ReadError, ReadExactError, VarInt, WriteError};
use rustls_pki_types::CertificateDer;

use crate::tls::{self, Identity};

/// ALPN of instance-to-instance connections.
pub const ALPN_PEER: &[u8] = b"claro-peer/1";
/// ALPN of client (CLI, HTTP gateway) connections.
pub const ALPN_CLIENT: &[u8] = b"claro-client/1";

/// Size of the big-endian length that precedes every frame body.
const PREFIX_BYTES: usize = 4;

/// Why a frame could not be sent or received, or an endpoint set up.
#[derive(Debug)]
pub enum WireError {
    /// Socket, TLS or QUIC failure other than an orderly close; the message says which.
    Io(String),
    /// A frame body longer than the limit of its message kind.
    TooLarge { len_bytes: usize, max_bytes: usize },
    /// A malformed frame: empty, truncated, not CBOR, not the expected type, trailing bytes.
    Decode(String),
    /// The connection was closed in an orderly way (by either side).
    Closed,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Io(msg) => f.write_str(msg),
            WireError::TooLarge {
                len_bytes,
                max_bytes,
            } => write!(
                f,
                "frame of {len_bytes} bytes exceeds the limit of {max_bytes} bytes"
            ),
            WireError::Decode(msg) => write!(f, "malformed frame: {msg}"),
            WireError::Closed => f.write_str("connection closed"),
        }
    }
}

impl std::error::Error for WireError {}

impl From<tls::TlsError> for WireError {
    fn from(e: tls::TlsError) -> Self {
        WireError::Io(format!("TLS set-up: {e}"))
    }
}

// ---------------------------------------------------------------------------
// Frames

/// The whole frame (length prefix + CBOR body) of `msg`, refused when the
/// body exceeds `bytes_max`. Encoding errors (only from a failing `Serialize`
/// impl) are reported as `Io`.
pub fn encode<T: serde::Serialize>(msg: &T, bytes_max: usize) -> Result<Vec<u8>, WireError> {
    let mut frame = vec![0u8; PREFIX_BYTES];
    ciborium::into_writer(msg, &mut frame)
        .map_err(|e| WireError::Io(format!("cannot encode a message: {e}")))?;
    let len_bytes = frame.len() - PREFIX_BYTES;
    let too_large = WireError::TooLarge {
        len_bytes,
        max_bytes: bytes_max,
    };
    if len_bytes > bytes_max {
        return Err(too_large);
    }
    let len = u32::try_from(len_bytes).map_err(|_| too_large)?;
    frame[..PREFIX_BYTES].copy_from_slice(&len.to_be_bytes());
    Ok(frame)
}

/// The body length announced by a prefix, checked against `bytes_max`.
fn body_len(prefix: [u8; PREFIX_BYTES], bytes_max: usize) -> Result<usize, WireError> {
    // u32 always fits usize on the 32- and 64-bit targets we build for.
    let len_bytes = u32::from_be_bytes(prefix) as usize;
    if len_bytes == 0 {
        return Err(WireError::Decode("empty frame".into()));
    }
    if len_bytes > bytes_max {
        return Err(WireError::TooLarge {
            len_bytes,
            max_bytes: bytes_max,
        });
    }
    Ok(len_bytes)
}

/// Decodes exactly one CBOR value filling the whole body.
fn decode_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    let mut rest = body;
    let msg = ciborium::from_reader(&mut rest).map_err(|e| WireError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        let trailing = rest.len();
        return Err(WireError::Decode(format!(
            "{trailing} trailing bytes after the message"
        )));
    }
    Ok(msg)
}

/// Decodes the first frame of `input` and moves `input` past it, with the
/// checks and errors of [`read_frame`] (which reads the same from a stream):
/// `Ok(None)` when `input` is empty. For callers holding frames in memory,
/// and for tests/fuzz.rs, which feeds it hostile bytes without a connection.
pub fn decode_frame<T: serde::de::DeserializeOwned>(
    input: &mut &[u8],
    bytes_max: usize,
) -> Result<Option<T>, WireError> {
    if input.is_empty() {
        return Ok(None);
    }
    let Some((prefix, rest)) = input.split_first_chunk::<PREFIX_BYTES>() else {
        return Err(WireError::Decode(format!(
            "frame truncated: input ended after {} bytes of the length prefix",
            input.len()
        )));
    };
    let len_bytes = body_len(*prefix, bytes_max)?;
    let Some((body, rest)) = rest.split_at_checked(len_bytes) else {
        return Err(WireError::Decode(format!(
            "frame truncated: input ended after {} of {len_bytes} body bytes",
            rest.len()
        )));
    };
    let msg = decode_body(body)?;
    *input = rest;
    Ok(Some(msg))
}

/// Sends one frame (see [`encode`]).
pub async fn write_frame<T: serde::Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
    bytes_max: usize,
) -> Result<(), WireError> {
    let frame = encode(msg, bytes_max)?;
    send.write_all(&frame).await.map_err(write_error)
}

/// Receives one frame. `Ok(None)`: the stream ended cleanly between frames.
/// Errors: truncated, empty or undecodable frame (`Decode`), announced body
/// above `bytes_max` (`TooLarge`, before reading or allocating the body).
pub async fn read_frame<T: serde::de::DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    bytes_max: usize,
) -> Result<Option<T>, WireError> {
    let Some(prefix) = read_prefix(recv).await? else {
        return Ok(None);
    };
    let len_bytes = body_len(prefix, bytes_max)?;
    let mut body = vec![0u8; len_bytes];
    recv.read_exact(&mut body).await.map_err(|e| match e {
        ReadExactError::FinishedEarly(got) => WireError::Decode(format!(
            "frame truncated: stream ended after {got} of {len_bytes} body bytes"
        )),
        ReadExactError::ReadError(e) => read_error(e),
    })?;
    decode_body(&body).map(Some)
}

/// Sends one request frame on a new bidirectional stream of `conn` and reads
/// the one answer frame, within `timeout_ms`. Generic over the message types:
/// this module moves frames and never knows what they mean.
pub async fn exchange<Q: serde::Serialize, A: serde::de::DeserializeOwned>(
    conn: &quinn::Connection,
    req: &Q,
    bytes_max: usize,
    timeout_ms: u64,
) -> Result<A, String> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        write_frame(&mut send, req, bytes_max)
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        match read_frame::<A>(&mut recv, bytes_max).await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err("the instance closed the stream without answering".to_string()),
            Err(e) => Err(e.to_string()),
        }
    };
    async_std::future::timeout(Duration::from_millis(timeout_ms), exchange)
        .await
        .map_err(|_| format!("no answer within {timeout_ms} ms"))?
}

/// The length prefix, or `None` when the stream ends before its first byte.
async fn read_prefix(
    recv: &mut quinn::RecvStream,
) -> Result<Option<[u8; PREFIX_BYTES]>, WireError> {
    let mut prefix = [0u8; PREFIX_BYTES];
    let mut filled = 0;
    while filled < PREFIX_BYTES {
        match recv.read(&mut prefix[filled..]).await.map_err(read_error)? {
            Some(n) => filled += n,
            None if filled == 0 => return Ok(None),
            None => {
                return Err(WireError::Decode(format!(
                    "frame truncated: stream ended after {filled} bytes of the length prefix"
                )))
            }
        }
    }
    Ok(Some(prefix))
}

fn connection_error(e: ConnectionError) -> WireError {
    match e {
        ConnectionError::ApplicationClosed(_) | ConnectionError::LocallyClosed => WireError::Closed,
        other => WireError::Io(format!("connection lost: {other}")),
    }
}

fn read_error(e: ReadError) -> WireError {
    match e {
        ReadError::ConnectionLost(e) => connection_error(e),
        ReadError::Reset(code) => WireError::Io(format!("stream reset by the peer (code {code})")),
        other => WireError::Io(format!("cannot read: {other}")),
    }
}

fn write_error(e: WriteError) -> WireError {
    match e {
        WriteError::ConnectionLost(e) => connection_error(e),
        WriteError::Stopped(code) => {
            WireError::Io(format!("stream stopped by the peer (code {code})"))
        }
        other => WireError::Io(format!("cannot write: {other}")),
    }
}

// ---------------------------------------------------------------------------
// Endpoint

/// Keep-alive: the peer learns within a second that we are alive, and NAT or
/// firewall state never ages out between heartbeats.
const KEEP_ALIVE_MS: u64 = 1_000;
/// A peer silent this long (ten missed keep-alives) is gone: its connection fails.
const IDLE_TIMEOUT_MS: u32 = 10_000;
/// Per-stream and per-connection flow-control windows. A SQLite snapshot of
/// 50 MB+ is streamed at > 200 MB/s on loopback; quinn's defaults (1.25 MB
/// per stream) would cap that well below, at any round-trip time.
const STREAM_WINDOW_BYTES: u32 = 16 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 64 << 20;
/// Concurrent streams a peer may open: one per request in flight, with room
/// for bursts of Raft messages, forwarded requests and snapshot chunks.
const BIDI_STREAMS_MAX: u32 = 256;
const UNI_STREAMS_MAX: u32 = 64;
/// First wait between two checks that the server confirmed the handshake;
/// doubled up to `CONFIRM_POLL_MAX_US` (loopback confirms in well under 1 ms).
const CONFIRM_POLL_MIN_US: u64 = 100;
const CONFIRM_POLL_MAX_US: u64 = 10_000;

/// The QUIC transport settings shared by both sides of every connection.
fn transport_config() -> quinn::TransportConfig {
    let mut config = quinn::TransportConfig::default();
    config
        .keep_alive_interval(Some(Duration::from_millis(KEEP_ALIVE_MS)))
        .max_idle_timeout(Some(VarInt::from_u32(IDLE_TIMEOUT_MS).into()))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW_BYTES))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW_BYTES))
        .send_window(u64::from(CONNECTION_WINDOW_BYTES))
        .max_concurrent_bidi_streams(VarInt::from_u32(BIDI_STREAMS_MAX))
        .max_concurrent_uni_streams(VarInt::from_u32(UNI_STREAMS_MAX));
    // Clusters run on LANs (and tests on loopback), where paths often carry
    // more than quinn's internet-safe 1452-byte ceiling: let MTU discovery
    // probe up to jumbo frames. A failed probe only costs a lost packet.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MTU_PROBE_BYTES_MAX);
    config.mtu_discovery_config(Some(mtu));
    config
}

/// Largest UDP payload MTU discovery tries (jumbo Ethernet frames).
const MTU_PROBE_BYTES_MAX: u16 = 8952;

/// A quinn endpoint with the configuration of its outgoing connections.
/// Cloning is cheap: clones share the one endpoint.
#[derive(Clone)]
pub struct Endpoint {
    pub quinn: quinn::Endpoint,
    client: quinn::ClientConfig,
}

impl Endpoint {
    /// An instance's endpoint on UDP `addr`: accepts [`ALPN_PEER`] and
    /// [`ALPN_CLIENT`] from holders of a CA-signed certificate, and connects
    /// to peers with [`ALPN_PEER`] as `id`.
    /// Certificates in `deny` are refused both ways.
    pub fn bind_server(
        addr: SocketAddr,
        id: &Identity,
        deny: &tls::DenyList,
    ) -> Result<Endpoint, WireError> {
        let tls = tls::server_config(id, &[ALPN_PEER, ALPN_CLIENT], deny)?;
        let crypto = QuicServerConfig::try_from(tls)
            .map_err(|e| WireError::Io(format!("TLS config unusable for QUIC: {e}")))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = transport_config();
        transport.initial_rtt(Duration::from_millis(CLI_INITIAL_RTT_MS));
        server.transport_config(Arc::new(transport));
        Self::bind(addr, Some(server), client_config(id, ALPN_PEER, deny)?)
    }

    /// A client-only endpoint (the CLI) on an ephemeral UDP port of `bind_ip`;
    /// connects with [`ALPN_CLIENT`] as `id`.
    pub fn bind_client(bind_ip: IpAddr, id: &Identity) -> Result<Endpoint, WireError> {
        let addr = SocketAddr::new(bind_ip, 0);
        // The CLI holds no replicated state, so no deny list: the servers
        // it talks to refuse a revoked one among themselves.
        let deny = tls::DenyList::default();
        Self::bind(addr, None, client_config(id, ALPN_CLIENT, &deny)?)
    }

    fn bind(
        addr: SocketAddr,
        server: Option<quinn::ServerConfig>,
        client: quinn::ClientConfig,
    ) -> Result<Endpoint, WireError> {
        let socket = std::net::UdpSocket::bind(addr)
            .map_err(|e| WireError::Io(format!("cannot bind UDP {addr}: {e}")))?;
        let runtime = Arc::new(quinn::AsyncStdRuntime);
        let quinn = quinn::Endpoint::new(EndpointConfig::default(), server, socket, runtime)
            .map_err(|e| WireError::Io(format!("cannot start the QUIC endpoint on {addr}: {e}")))?;
        Ok(Endpoint { quinn, client })
    }

    /// Connects to `addr`, whose certificate must cover `server_name` (a
    /// server's config name), and waits until the server has accepted our
    /// certificate too, all within `timeout_ms`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
        timeout_ms: u64,
    ) -> Result<quinn::Connection, WireError> {
        let connecting = self
            .quinn
            .connect_with(self.client.clone(), addr, server_name)
            .map_err(|e| {
                WireError::Io(format!("cannot connect to {server_name} at {addr}: {e}"))
            })?;
        let handshake = async {
            let conn = connecting.await.map_err(|e| {
                WireError::Io(format!(
                    "handshake with {server_name} at {addr} failed: {e}"
                ))
            })?;
            await_confirmed(&conn)
                .await
                .map_err(|e| WireError::Io(format!("{server_name} at {addr} refused us: {e}")))?;
            Ok(conn)
        };
        async_std::future::timeout(Duration::from_millis(timeout_ms), handshake)
            .await
            .unwrap_or_else(|_| {
                Err(WireError::Io(format!(
                    "no handshake with {server_name} at {addr} within {timeout_ms} ms"
                )))
            })
    }
}

fn client_config(
    id: &Identity,
    alpn: &[u8],
    deny: &tls::DenyList,
) -> Result<quinn::ClientConfig, WireError> {
    let crypto = QuicClientConfig::try_from(tls::client_config(id, alpn, deny)?)
        .map_err(|e| WireError::Io(format!("TLS config unusable for QUIC: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = transport_config();
    if alpn == ALPN_CLIENT {
        transport.initial_rtt(Duration::from_millis(CLI_INITIAL_RTT_MS));
    }
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The round trip assumed before one is measured, on the CLI's side and on
/// every instance's accepting side (where the server's handshake flight is
/// sent again when lost). quinn's default (333 ms) is the internet's: a
/// lost handshake packet went again only after about a second, and at 30 %
/// packet loss on the server asked 10-15 of 60 CLI calls missed their 1.5 s
/// handshake budget; with a LAN's round trip it goes again after about
/// 150 ms, doubling while lost, and 1 of 60 did (docs/BENCHMARKS.md). A
/// slower path only sees an early, harmless resend until its round trip is
/// known. Instances connecting to their peers keep quinn's default.
const CLI_INITIAL_RTT_MS: u64 = 50;

/// Waits for the server's HANDSHAKE_DONE. In TLS 1.3 the client finishes its
/// handshake before the server has checked the client certificate, so a
/// connection quinn reports as established may still be refused one round
/// trip later. quinn exposes confirmation only through its frame counters,
/// hence the (short, bounded by the caller's timeout) polling.
async fn await_confirmed(conn: &quinn::Connection) -> Result<(), ConnectionError> {
    let mut pause_us = CONFIRM_POLL_MIN_US;
    loop {
        if let Some(reason) = conn.close_reason() {
            return Err(reason);
        }
        if conn.stats().frame_rx.handshake_done > 0 {
            return Ok(());
        }
        async_std::task::sleep(Duration::from_micros(pause_us)).await;
        pause_us = (pause_us * 2).min(CONFIRM_POLL_MAX_US);
    }
}

/// The ALPN negotiated on `conn` (always set for our endpoints).
pub fn alpn_of(conn: &quinn::Connection) -> Option<Vec<u8>> {
    let data = conn.handshake_data()?.downcast::<HandshakeData>().ok()?;
    data.protocol
}

/// The peer's end-entity certificate (already verified against the CA).
pub fn peer_cert(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    chain.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Host;
    use serde::{Deserialize, Serialize};
    use std::net::Ipv4Addr;
    use std::path::Path;
    use std::time::Instant;

    const MAX_BYTES: usize = 1 << 20;
    const TIMEOUT_MS: u64 = 5_000;
    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    struct Msg {
        id: u64,
        text: String,
        data: Vec<u8>,
    }

    fn msg() -> Msg {
        Msg {
            id: 7,
            text: "hello".into(),
            data: vec![1, 2, 3],
        }
    }

    /// A cluster's TLS material (srv1, srv2 and the client) in a temp dir;
    /// srv1's host is an IP, srv2's a DNS name.
    fn pki() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let servers = [
            (
                "srv1".to_string(),
                Host::Ip(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))),
            ),
            ("srv2".to_string(), Host::Name("srv2.example.com".into())),
        ];
        // The CA's folder is not needed once everything is signed.
        let ca = tempfile::tempdir().unwrap();
        tls::generate(dir.path(), ca.path(), "test", &servers, false).unwrap();
        dir
    }

    fn server(dir: &Path, name: &str) -> (Endpoint, SocketAddr) {
        server_denying(dir, name, &tls::DenyList::default())
    }

    fn server_denying(dir: &Path, name: &str, deny: &tls::DenyList) -> (Endpoint, SocketAddr) {
        let id = tls::load_identity(dir, name).unwrap();
        let ep = Endpoint::bind_server(SocketAddr::new(LOCALHOST, 0), &id, deny).unwrap();
        let addr = ep.quinn.local_addr().unwrap();
        (ep, addr)
    }

    fn client(dir: &Path) -> Endpoint {
        let id = tls::load_identity(dir, tls::CLIENT_NAME).unwrap();
        Endpoint::bind_client(LOCALHOST, &id).unwrap()
    }

    /// Accepts one connection and echoes the frames of its first stream;
    /// returns the connection's ALPN and peer certificate.
    fn spawn_echo(
        ep: quinn::Endpoint,
    ) -> async_std::task::JoinHandle<(Option<Vec<u8>>, Option<CertificateDer<'static>>)> {
        async_std::task::spawn(async move {
            let conn = ep.accept().await.unwrap().await.unwrap();
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            while let Some(m) = read_frame::<Msg>(&mut recv, MAX_BYTES).await.unwrap() {
                write_frame(&mut send, &m, MAX_BYTES).await.unwrap();
            }
            send.finish().unwrap();
            conn.closed().await;
            (alpn_of(&conn), peer_cert(&conn))
        })
    }

    /// Accepts every incoming connection attempt (so handshakes proceed).
    fn spawn_acceptor(ep: quinn::Endpoint) {
        async_std::task::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let _ = incoming.await;
            }
        });
    }

    async fn echo_once(conn: &quinn::Connection) {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        for i in 0..3 {
            let sent = Msg { id: i, ..msg() };
            write_frame(&mut send, &sent, MAX_BYTES).await.unwrap();
            let got: Msg = read_frame(&mut recv, MAX_BYTES).await.unwrap().unwrap();
            assert_eq!(got, sent);
        }
        send.finish().unwrap();
        assert!(read_frame::<Msg>(&mut recv, MAX_BYTES)
            .await
            .unwrap()
            .is_none());
        conn.close(VarInt::from_u32(0), b"done");
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let frame = encode(&msg(), MAX_BYTES).unwrap();
        let prefix: [u8; PREFIX_BYTES] = frame[..PREFIX_BYTES].try_into().unwrap();
        let len = body_len(prefix, MAX_BYTES).unwrap();
        assert_eq!(len, frame.len() - PREFIX_BYTES);
        assert_eq!(decode_body::<Msg>(&frame[PREFIX_BYTES..]).unwrap(), msg());
    }

    #[test]
    fn limits_and_malformed_bodies_are_refused() {
        let big = Msg {
            data: vec![0; 100],
            ..msg()
        };
        let err = encode(&big, 50).unwrap_err();
        assert!(
            matches!(err, WireError::TooLarge { max_bytes: 50, .. }),
            "{err}"
        );
        let err = body_len(1_000_001u32.to_be_bytes(), 1_000_000).unwrap_err();
        assert!(
            matches!(
                err,
                WireError::TooLarge {
                    len_bytes: 1_000_001,
                    max_bytes: 1_000_000
                }
            ),
            "{err}"
        );
        assert!(matches!(body_len([0; 4], 10), Err(WireError::Decode(_))));
        assert!(matches!(
            decode_body::<Msg>(&[0xff, 0x13, 0x00]),
            Err(WireError::Decode(_))
        ));
        // Valid CBOR of another shape, and a valid message with trailing bytes.
        let other = encode(&"text", MAX_BYTES).unwrap();
        assert!(matches!(
            decode_body::<Msg>(&other[PREFIX_BYTES..]),
            Err(WireError::Decode(_))
        ));
        let mut body = encode(&msg(), MAX_BYTES).unwrap().split_off(PREFIX_BYTES);
        body.push(0);
        let err = decode_body::<Msg>(&body).unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");
    }

    /// Frames in memory: one after the other, then the end; the errors of
    /// `read_frame` for a cut prefix, a cut body and a prefix over the limit.
    #[test]
    fn decode_frame_reads_frames_in_turn() {
        let mut two = encode(&msg(), MAX_BYTES).unwrap();
        two.extend(encode(&Msg { id: 8, ..msg() }, MAX_BYTES).unwrap());
        let mut rest = &two[..];
        let first: Option<Msg> = decode_frame(&mut rest, MAX_BYTES).unwrap();
        assert_eq!(first, Some(msg()));
        let second: Option<Msg> = decode_frame(&mut rest, MAX_BYTES).unwrap();
        assert_eq!(second.map(|m| m.id), Some(8));
        assert!(decode_frame::<Msg>(&mut rest, MAX_BYTES).unwrap().is_none());
        let err = decode_frame::<Msg>(&mut &two[..2], MAX_BYTES).unwrap_err();
        assert!(
            err.to_string().contains("2 bytes of the length prefix"),
            "{err}"
        );
        let err = decode_frame::<Msg>(&mut &two[..10], MAX_BYTES).unwrap_err();
        assert!(err.to_string().contains("6 of"), "{err}");
        let err = decode_frame::<Msg>(&mut &two[..], 3).unwrap_err();
        assert!(
            matches!(err, WireError::TooLarge { max_bytes: 3, .. }),
            "{err}"
        );
    }

    #[async_std::test]
    async fn client_round_trip_over_quic() {
        let dir = pki();
        let (srv, addr) = server(dir.path(), "srv1");
        let echo = spawn_echo(srv.quinn.clone());
        let cli = client(dir.path());
        let conn = cli.connect(addr, "srv1", TIMEOUT_MS).await.unwrap();
        assert_eq!(alpn_of(&conn).as_deref(), Some(ALPN_CLIENT));
        echo_once(&conn).await;
        let (alpn, cert) = echo.await;
        assert_eq!(alpn.as_deref(), Some(ALPN_CLIENT));
        let client_id = tls::load_identity(dir.path(), tls::CLIENT_NAME).unwrap();
        assert_eq!(cert.as_ref(), Some(&client_id.chain[0]));
        assert!(tls::cert_is_for(&cert.unwrap(), tls::CLIENT_NAME));
    }

    #[async_std::test]
    async fn peer_connection_identifies_the_connecting_server() {
        let dir = pki();
        let (srv1, addr1) = server(dir.path(), "srv1");
        let (srv2, _) = server(dir.path(), "srv2");
        let echo = spawn_echo(srv1.quinn.clone());
        let conn = srv2.connect(addr1, "srv1", TIMEOUT_MS).await.unwrap();
        let srv1_cert = peer_cert(&conn).unwrap();
        assert!(tls::cert_is_for(&srv1_cert, "srv1"));
        echo_once(&conn).await;
        let (alpn, cert) = echo.await;
        assert_eq!(alpn.as_deref(), Some(ALPN_PEER));
        let cert = cert.unwrap();
        assert!(tls::cert_is_for(&cert, "srv2"));
        assert!(!tls::cert_is_for(&cert, "srv1"));
    }

    #[async_std::test]
    async fn foreign_client_is_refused_within_the_timeout() {
        let dir = pki();
        let foreign = pki();
        let (srv, addr) = server(dir.path(), "srv1");
        spawn_acceptor(srv.quinn.clone());
        let start = Instant::now();
        let err = client(foreign.path())
            .connect(addr, "srv1", TIMEOUT_MS)
            .await
            .unwrap_err();
        assert!(start.elapsed() < Duration::from_millis(TIMEOUT_MS), "{err}");
        assert!(
            err.to_string().contains("failed"),
            "refused, not timed out: {err}"
        );
    }

    /// A client that trusts the server (same CA) but presents a certificate
    /// from another CA: its own handshake completes, then the server refuses
    /// it, and connect must report that rather than hand out a dead connection.
    #[async_std::test]
    async fn foreign_client_certificate_is_refused_by_the_server() {
        let dir = pki();
        let foreign = pki();
        let (srv, addr) = server(dir.path(), "srv1");
        spawn_acceptor(srv.quinn.clone());
        let trusted = tls::load_identity(dir.path(), tls::CLIENT_NAME).unwrap();
        let stranger = tls::load_identity(foreign.path(), tls::CLIENT_NAME).unwrap();
        let id = Identity {
            ca: trusted.ca,
            ..stranger
        };
        let cli = Endpoint::bind_client(LOCALHOST, &id).unwrap();
        let start = Instant::now();
        let err = cli.connect(addr, "srv1", TIMEOUT_MS).await.unwrap_err();
        assert!(start.elapsed() < Duration::from_millis(TIMEOUT_MS), "{err}");
        assert!(err.to_string().contains("refused us"), "{err}");
    }

    /// A revoked client certificate is refused at the handshake, promptly;
    /// the list is live: revoking it later refuses the next connection.
    #[async_std::test]
    async fn a_revoked_client_certificate_is_refused() {
        let dir = pki();
        let deny = tls::DenyList::default();
        let (srv, addr) = server_denying(dir.path(), "srv1", &deny);
        let echo = spawn_echo(srv.quinn.clone());
        // One client endpoint for both: a resumed TLS session would skip
        // the certificate check the second time.
        let cli = client(dir.path());
        let conn = cli.connect(addr, "srv1", TIMEOUT_MS).await.unwrap();
        echo_once(&conn).await;
        echo.await;
        let id = tls::load_identity(dir.path(), tls::CLIENT_NAME).unwrap();
        deny.replace([tls::revocation::fingerprint(&id.chain[0])]);
        spawn_acceptor(srv.quinn.clone());
        let start = Instant::now();
        let err = cli.connect(addr, "srv1", TIMEOUT_MS).await.unwrap_err();
        assert!(start.elapsed() < Duration::from_millis(TIMEOUT_MS), "{err}");
        assert!(err.to_string().contains("refused us"), "{err}");
    }

    /// An instance that connects to a peer whose certificate is revoked
    /// refuses it, as the peer's own accepting side would.
    #[async_std::test]
    async fn a_revoked_server_certificate_is_refused_by_who_connects() {
        let dir = pki();
        let (srv, addr) = server(dir.path(), "srv1");
        let echo = spawn_echo(srv.quinn.clone());
        let deny = tls::DenyList::default();
        let (peer, _) = server_denying(dir.path(), "srv2", &deny);
        let conn = peer.connect(addr, "srv1", TIMEOUT_MS).await.unwrap();
        echo_once(&conn).await;
        echo.await;
        let revoked = tls::load_identity(dir.path(), "srv1").unwrap();
        deny.replace([tls::revocation::fingerprint(&revoked.chain[0])]);
        spawn_acceptor(srv.quinn.clone());
        let err = peer.connect(addr, "srv1", TIMEOUT_MS).await.unwrap_err();
        assert!(err.to_string().contains("Revoked"), "{err}");
    }

    #[async_std::test]
    async fn wrong_server_name_is_refused() {
        let dir = pki();
        let (srv, addr) = server(dir.path(), "srv1");
        spawn_acceptor(srv.quinn.clone());
        let err = client(dir.path())
            .connect(addr, "srv2", TIMEOUT_MS)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not valid for name"), "{err}");
    }

    /// A server whose certificate also names a DNS host is still verified by
    /// its config name, which is what every connection passes.
    #[async_std::test]
    async fn server_with_a_dns_host_is_verified_by_its_config_name() {
        let dir = pki();
        let (srv, addr) = server(dir.path(), "srv2");
        let echo = spawn_echo(srv.quinn.clone());
        let conn = client(dir.path())
            .connect(addr, "srv2", TIMEOUT_MS)
            .await
            .unwrap();
        echo_once(&conn).await;
        echo.await;
        spawn_acceptor(srv.quinn.clone());
        let err = client(dir.path())
            .connect(addr, "srv1", TIMEOUT_MS)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not valid for name"), "{err}");
    }

    #[async_std::test]
    async fn connect_times_out_when_nobody_answers() {
        let dir = pki();
        // A bound UDP socket that never answers.
        let silent = std::net::UdpSocket::bind((LOCALHOST, 0)).unwrap();
        let addr = silent.local_addr().unwrap();
        let err = client(dir.path())
            .connect(addr, "srv1", 300)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("within 300 ms"), "{err}");
    }

    /// Sends each raw byte string on its own stream (finished unless it is
    /// the announced-too-large case, to show that no body is awaited) and
    /// returns what `read_frame` made of each on the server side.
    async fn server_reads(cases: Vec<(Vec<u8>, bool)>) -> Vec<Result<Option<Msg>, WireError>> {
        let dir = pki();
        let (srv, addr) = server(dir.path(), "srv1");
        let count = cases.len();
        let reader = async_std::task::spawn(async move {
            let conn = srv.quinn.accept().await.unwrap().await.unwrap();
            let mut results = Vec::new();
            for _ in 0..count {
                let (_send, mut recv) = conn.accept_bi().await.unwrap();
                results.push(read_frame::<Msg>(&mut recv, MAX_BYTES).await);
            }
            results
        });
        let conn = client(dir.path())
            .connect(addr, "srv1", TIMEOUT_MS)
            .await
            .unwrap();
        let mut open = Vec::new();
        for (bytes, finish) in cases {
            let (mut send, _recv) = conn.open_bi().await.unwrap();
            send.write_all(&bytes).await.unwrap();
            if finish {
                send.finish().unwrap();
            }
            open.push(send);
        }
        reader.await
    }

    #[async_std::test]
    async fn read_frame_handles_ends_truncation_and_limits() {
        let good = encode(&msg(), MAX_BYTES).unwrap();
        let mut garbage = 3u32.to_be_bytes().to_vec();
        garbage.extend([0xff, 0xff, 0xff]);
        let mut short_body = 100u32.to_be_bytes().to_vec();
        short_body.extend([0; 10]);
        let too_large = (MAX_BYTES as u32 + 1).to_be_bytes().to_vec();
        let cases = vec![
            (good, true),
            (Vec::new(), true),
            (vec![0, 0], true),
            (short_body, true),
            (too_large, false),
            (0u32.to_be_bytes().to_vec(), true),
            (garbage, true),
        ];
        let results = server_reads(cases).await;
        assert_eq!(results[0].as_ref().unwrap().as_ref(), Some(&msg()));
        assert!(matches!(results[1], Ok(None)));
        for i in [2, 3, 5, 6] {
            assert!(
                matches!(results[i], Err(WireError::Decode(_))),
                "case {i}: {:?}",
                results[i]
            );
        }
        let truncated = results[3].as_ref().unwrap_err().to_string();
        assert!(truncated.contains("10 of 100"), "{truncated}");
        assert!(
            matches!(results[4], Err(WireError::TooLarge { .. })),
            "{:?}",
            results[4]
        );
    }
}
