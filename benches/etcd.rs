//! The etcd side of the cluster benchmark: a 3-member etcd cluster (Debian's
//! `etcd-server`, etcd 3.4, default election and heartbeat timings) on
//! loopback, a small keep-alive HTTP/1.1 client for its JSON gateway, and
//! `etcdctl put` (Debian's `etcd-client`), so that both systems are measured
//! the same way in the same run: sequential writes through the client port,
//! and kill -9 of the leader to the first successful `etcdctl put` (see
//! `support/failover.rs`). Only std and serde_json; all traffic stays on
//! 127.0.0.0/8 and every loop is bounded in count and time.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ETCD_BIN: &str = "/usr/bin/etcd";
/// Debian's `etcd-client`: the client a user has, for the failover figure.
pub const ETCDCTL_BIN: &str = "/usr/bin/etcdctl";
const MEMBERS: usize = 3;
const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;
const START_WAIT: Duration = Duration::from_secs(30);
/// One HTTP call's limit (the readiness and latency measurements only).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_BYTES_MAX: usize = 1 << 20;
const HEADER_LINES_MAX: usize = 100;

/// Three etcd members as child processes; all killed and their data removed on drop.
pub struct EtcdCluster {
    dir: PathBuf,
    net: u8,
    members: Vec<Option<Child>>,
}

fn ip(net: u8, i: usize) -> String {
    format!("127.0.{net}.{}", i + 1)
}

impl EtcdCluster {
    pub fn start(net: u8) -> Result<EtcdCluster, String> {
        if !Path::new(ETCD_BIN).exists() {
            return Err(format!("{ETCD_BIN} missing: apt-get install etcd-server"));
        }
        ports_free(net)?;
        let mut cluster = EtcdCluster {
            dir: fresh_dir(net)?,
            net,
            members: Vec::new(),
        };
        // The cluster owns the dir and the children from here on, so an error
        // below still kills what started and removes the dir (Drop).
        let initial: Vec<String> = (0..MEMBERS)
            .map(|i| format!("m{}=http://{}:{PEER_PORT}", i + 1, ip(net, i)))
            .collect();
        for i in 0..MEMBERS {
            let child = cluster.spawn(i, &initial.join(","))?;
            cluster.members.push(Some(child));
        }
        cluster.wait_ready()?;
        Ok(cluster)
    }

    fn spawn(&self, i: usize, initial: &str) -> Result<Child, String> {
        let client = format!("http://{}:{CLIENT_PORT}", ip(self.net, i));
        let peer = format!("http://{}:{PEER_PORT}", ip(self.net, i));
        let log = std::fs::File::create(self.log_path(i)).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        Command::new(ETCD_BIN)
            .args(["--name", &format!("m{}", i + 1)])
            .arg("--data-dir")
            .arg(self.dir.join(format!("m{}", i + 1)))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", initial])
            .args(["--initial-cluster-state", "new"])
            // A token of its own, so peers of another cluster never mix in.
            .args([
                "--initial-cluster-token",
                &format!("claro-bench-{}", self.net),
            ])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot start {ETCD_BIN}: {e}"))
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("m{}.log", i + 1))
    }

    /// Until a leader is elected and a put through it succeeds. A member that
    /// exits (e.g. its address is taken) fails the start at once, with its log.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_WAIT;
        let mut last = String::new();
        while Instant::now() < deadline {
            self.check_alive()?;
            match self
                .leader()
                .and_then(|l| EtcdClient::connect(self.member_addr(l))?.put("bench/ready", b"1"))
            {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("etcd not ready within {START_WAIT:?}: {last}"))
    }

    fn check_alive(&mut self) -> Result<(), String> {
        for i in 0..self.members.len() {
            let Some(child) = self.members[i].as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(format!(
                    "etcd member m{} exited ({status}); last log lines:\n{}",
                    i + 1,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
        }
        Ok(())
    }

    pub fn member_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::new(
            ip(self.net, i).parse().expect("loopback address"),
            CLIENT_PORT,
        )
    }

    /// The member whose status names itself as leader (`leader` equals its
    /// own `header.member_id`); a follower names someone else.
    pub fn leader(&self) -> Result<usize, String> {
        for i in 0..self.members.len() {
            if self.members[i].is_none() {
                continue;
            }
            let status = EtcdClient::connect(self.member_addr(i))
                .and_then(|mut c| c.post("/v3/maintenance/status", "{}"));
            let Ok(body) = status else { continue };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
                continue;
            };
            // uint64 fields come as JSON strings from the gateway.
            let me = v["header"]["member_id"].as_str().unwrap_or("");
            if !me.is_empty() && v["leader"].as_str() == Some(me) {
                return Ok(i);
            }
        }
        Err("no live member reports itself leader".into())
    }

    /// The URL a client gives as `--endpoints` for member `i`.
    pub fn client_url(&self, i: usize) -> String {
        format!("http://{}", self.member_addr(i))
    }

    /// The first live member other than `except`.
    pub fn survivor(&self, except: usize) -> Result<usize, String> {
        (0..self.members.len())
            .find(|i| *i != except && self.members[*i].is_some())
            .ok_or_else(|| "no surviving member".to_string())
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.members.get_mut(i).and_then(Option::take) {
            let _ = child.kill(); // SIGKILL on Unix
            let _ = child.wait();
        }
    }

    pub fn rss_bytes(&self, i: usize) -> Option<u64> {
        let pid = self.members.get(i)?.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill9(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Refuse to start over a leftover etcd on the same addresses: our members
/// would fail to bind and the readiness check would talk to the old ones.
fn ports_free(net: u8) -> Result<(), String> {
    for i in 0..MEMBERS {
        for port in [CLIENT_PORT, PEER_PORT] {
            let addr = SocketAddr::new(ip(net, i).parse().expect("loopback"), port);
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Err(format!("{addr} is already in use (a leftover etcd?)"));
            }
        }
    }
    Ok(())
}

/// A new directory of its own under the system temp dir (create_dir, not
/// create_dir_all: it must not exist yet, so two runs never share data).
fn fresh_dir(net: u8) -> Result<PathBuf, String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!("claro-bench-etcd-{}-{net}-{nanos}", std::process::id());
    let dir = std::env::temp_dir().join(name);
    std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// A keep-alive HTTP/1.1 client for one member's JSON gateway. The connection
/// is dropped after any failure (it may be out of step) and opened again by
/// the next call.
pub struct EtcdClient {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
    timeout: Duration,
}

impl EtcdClient {
    pub fn connect(addr: SocketAddr) -> Result<EtcdClient, String> {
        EtcdClient::with_timeout(addr, CALL_TIMEOUT)
    }

    fn with_timeout(addr: SocketAddr, timeout: Duration) -> Result<EtcdClient, String> {
        let stream = Some(open(addr, timeout).map_err(|e| format!("{addr}: {e}"))?);
        Ok(EtcdClient {
            addr,
            stream,
            timeout,
        })
    }

    pub fn put(&mut self, key: &str, value: &[u8]) -> Result<(), String> {
        let body = format!(
            "{{\"key\":\"{}\",\"value\":\"{}\"}}",
            base64(key.as_bytes()),
            base64(value)
        );
        let answer = self.post("/v3/kv/put", &body)?;
        let v: serde_json::Value =
            serde_json::from_str(&answer).map_err(|e| format!("{e}: {answer}"))?;
        if v.get("header").is_some() && v.get("error").is_none() {
            Ok(())
        } else {
            Err(answer)
        }
    }

    /// One POST; the body on HTTP 200, else an error. A kept-alive connection
    /// that the server closed meanwhile is retried once on a new one (not a
    /// timeout: that would double the caller's bound).
    fn post(&mut self, path: &str, body: &str) -> Result<String, String> {
        let reused = self.stream.is_some();
        let mut result = self.exchange(path, body);
        if reused && matches!(&result, Err(e) if closed_by_peer(e)) {
            result = self.exchange(path, body);
        }
        match result {
            Ok((200, text)) => Ok(text),
            Ok((status, text)) => Err(format!("HTTP {status}: {text}")),
            Err(e) if timed_out(&e) => Err(format!(
                "{}: no answer within {:?}",
                self.addr, self.timeout
            )),
            Err(e) => Err(format!("{}: {e}", self.addr)),
        }
    }

    fn exchange(&mut self, path: &str, body: &str) -> io::Result<(u16, String)> {
        if self.stream.is_none() {
            self.stream = Some(open(self.addr, self.timeout)?);
        }
        let stream = self.stream.as_mut().expect("just opened");
        let deadline = Instant::now() + self.timeout;
        let result = request(stream, self.addr, path, body, deadline);
        match &result {
            Ok((_, _, keep)) if *keep => {}
            _ => self.stream = None,
        }
        result.map(|(status, text, _)| (status, text))
    }
}

fn open(addr: SocketAddr, timeout: Duration) -> io::Result<BufReader<TcpStream>> {
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    // Small request and answer: without this, Nagle would add delay to the latency.
    s.set_nodelay(true)?;
    Ok(BufReader::new(s))
}

fn closed_by_peer(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

/// A socket read timeout shows as WouldBlock ("temporarily unavailable").
fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Writes one request and reads its answer: (status, body, keep-alive).
/// Each read is bounded by the socket timeout and the whole by `deadline`.
fn request(
    r: &mut BufReader<TcpStream>,
    addr: SocketAddr,
    path: &str,
    body: &str,
    deadline: Instant,
) -> io::Result<(u16, String, bool)> {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    r.get_mut().write_all(req.as_bytes())?;
    let head = read_head(r, deadline)?;
    let text = match (head.chunked, head.length) {
        (true, _) => read_chunked(r, deadline)?,
        (false, Some(n)) => read_body(r, n)?,
        (false, None) => return Err(bad("answer without length")),
    };
    Ok((head.status, text, head.keep_alive))
}

fn read_line(r: &mut BufReader<TcpStream>, deadline: Instant) -> io::Result<String> {
    if Instant::now() > deadline {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "call timed out"));
    }
    let mut line = String::new();
    // take() bounds a line that never ends.
    let n = r.by_ref().take(8192).read_line(&mut line)?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line.trim_end().to_string())
}

struct Head {
    status: u16,
    length: Option<usize>,
    chunked: bool,
    keep_alive: bool,
}

fn read_head(r: &mut BufReader<TcpStream>, deadline: Instant) -> io::Result<Head> {
    let status_line = read_line(r, deadline)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line: {status_line}")))?;
    let mut head = Head {
        status,
        length: None,
        chunked: false,
        keep_alive: true,
    };
    for _ in 0..HEADER_LINES_MAX {
        let line = read_line(r, deadline)?;
        if line.is_empty() {
            return Ok(head);
        }
        let (name, value) = line.split_once(':').unwrap_or((&line, ""));
        let value = value.trim().to_ascii_lowercase();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => head.length = value.parse().ok(),
            "transfer-encoding" => head.chunked = value.contains("chunked"),
            "connection" => head.keep_alive = !value.contains("close"),
            _ => {}
        }
    }
    Err(bad("too many header lines"))
}

fn read_body(r: &mut BufReader<TcpStream>, n: usize) -> io::Result<String> {
    if n > RESPONSE_BYTES_MAX {
        return Err(bad(format!("answer of {n} bytes")));
    }
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf)?;
    String::from_utf8(buf).map_err(|e| bad(e.to_string()))
}

fn read_chunked(r: &mut BufReader<TcpStream>, deadline: Instant) -> io::Result<String> {
    let mut out = String::new();
    while out.len() <= RESPONSE_BYTES_MAX {
        let size_line = read_line(r, deadline)?;
        let hex = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(hex, 16).map_err(|e| bad(e.to_string()))?;
        if size == 0 {
            read_line(r, deadline)?; // the empty line after the last chunk (no trailers from etcd)
            return Ok(out);
        }
        out += &read_body(r, size)?;
        read_line(r, deadline)?; // CRLF closing the chunk
    }
    Err(bad("answer too large"))
}

/// Standard base64 with padding (the gateway's encoding of protobuf bytes).
fn base64(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let mut n = 0u32;
        for (k, b) in group.iter().enumerate() {
            n |= (*b as u32) << (16 - 8 * k);
        }
        // A group of m bytes gives m + 1 significant digits, then '=' padding.
        for k in 0..4 {
            if k <= group.len() {
                out.push(DIGITS[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `count` sequential puts of `value_bytes` through one kept-alive connection
/// to the leader (a follower would add a forwarding hop); microseconds each.
pub fn sequential_put_latencies_us(
    cluster: &EtcdCluster,
    count: usize,
    value_bytes: usize,
) -> Result<Vec<u64>, String> {
    let mut client = EtcdClient::connect(cluster.member_addr(cluster.leader()?))?;
    let value = vec![b'x'; value_bytes];
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let key = format!("bench/lat/{i}");
        let t = Instant::now();
        client.put(&key, &value)?;
        out.push(t.elapsed().as_micros() as u64);
    }
    Ok(out)
}

/// `etcdctl put KEY VALUE` through the member at `url`, with etcdctl's own
/// defaults (etcd 3.4's etcdctl speaks the v3 API without being told).
pub fn etcdctl_put(url: &str, key: &str, value: &str) -> Command {
    let mut cmd = Command::new(ETCDCTL_BIN);
    cmd.args(["put", key, value, &format!("--endpoints={url}")]);
    cmd
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"foob"), "Zm9vYg==");
        assert_eq!(super::base64(b"fooba"), "Zm9vYmE=");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(super::base64(&[0xfb, 0xff]), "+/8=");
    }
}
