//! The etcd side of the cluster benchmark: a 3-member etcd cluster (Debian's
//! `etcd-server`, default timings) on loopback, and a small keep-alive HTTP/1.1
//! client for its JSON gateway, so that both systems are measured the same way
//! in the same run: sequential writes through the client port, and kill -9 of
//! the leader to the next successful write.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ETCD_BIN: &str = "/usr/bin/etcd";
const MEMBERS: usize = 3;
const START_WAIT_S: u64 = 30;
const FAILOVER_WAIT_S: u64 = 30;
/// One HTTP call's limit (a put to a member without a leader hangs until then).
const CALL_TIMEOUT_MS: u64 = 2_000;
/// A put during failover gives up sooner, to try the next member.
const FAILOVER_CALL_MS: u64 = 250;
const RESPONSE_BYTES_MAX: usize = 1 << 20;

pub struct EtcdCluster {
    dir: std::path::PathBuf,
    net: u8,
    members: Vec<Option<Child>>,
}

fn ip(net: u8, i: usize) -> String {
    format!("127.0.{net}.{}", i + 1)
}

impl EtcdCluster {
    pub fn start(net: u8) -> Result<EtcdCluster, String> {
        if !std::path::Path::new(ETCD_BIN).exists() {
            return Err(format!("{ETCD_BIN} missing: apt-get install etcd-server"));
        }
        let dir = std::env::temp_dir().join(format!("claro-bench-etcd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let initial: Vec<String> = (0..MEMBERS)
            .map(|i| format!("m{i}=http://{}:2380", ip(net, i)))
            .collect();
        let mut cluster = EtcdCluster {
            dir,
            net,
            members: Vec::new(),
        };
        for i in 0..MEMBERS {
            let child = cluster.spawn(i, &initial.join(","))?;
            cluster.members.push(Some(child));
        }
        cluster.wait_ready()?;
        Ok(cluster)
    }

    fn spawn(&self, i: usize, initial: &str) -> Result<Child, String> {
        let a = ip(self.net, i);
        let log =
            std::fs::File::create(self.dir.join(format!("m{i}.log"))).map_err(|e| e.to_string())?;
        Command::new(ETCD_BIN)
            .args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(self.dir.join(format!("m{i}")))
            .args(["--listen-client-urls", &format!("http://{a}:2379")])
            .args(["--advertise-client-urls", &format!("http://{a}:2379")])
            .args(["--listen-peer-urls", &format!("http://{a}:2380")])
            .args(["--initial-advertise-peer-urls", &format!("http://{a}:2380")])
            .args([
                "--initial-cluster",
                initial,
                "--initial-cluster-state",
                "new",
            ])
            .args(["--initial-cluster-token", "claro-bench"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start etcd: {e}"))
    }

    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(START_WAIT_S);
        let mut last = String::new();
        while Instant::now() < deadline {
            match self
                .leader()
                .and_then(|l| EtcdClient::connect(self.member_addr(l))?.put("ready", b"1"))
            {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("etcd not ready within {START_WAIT_S} s: {last}"))
    }

    pub fn member_addr(&self, i: usize) -> SocketAddr {
        format!("{}:2379", ip(self.net, i))
            .parse()
            .expect("loopback address")
    }

    /// The member whose id is the leader its own status names.
    pub fn leader(&self) -> Result<usize, String> {
        for i in 0..MEMBERS {
            if self.members[i].is_none() {
                continue;
            }
            let Ok(mut c) = EtcdClient::connect(self.member_addr(i)) else {
                continue;
            };
            let Ok(body) = c.post("/v3/maintenance/status", "{}") else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let me = v["header"]["member_id"].as_str().unwrap_or("");
            if !me.is_empty() && v["leader"].as_str() == Some(me) {
                return Ok(i);
            }
        }
        Err("no member reports itself leader".into())
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn rss_bytes(&self, i: usize) -> Option<u64> {
        let pid = self.members[i].as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
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

/// A keep-alive HTTP/1.1 client for one member's JSON gateway.
pub struct EtcdClient {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
    timeout: Duration,
}

impl EtcdClient {
    pub fn connect(addr: SocketAddr) -> Result<EtcdClient, String> {
        let mut c = EtcdClient {
            addr,
            stream: None,
            timeout: Duration::from_millis(CALL_TIMEOUT_MS),
        };
        c.reconnect()?;
        Ok(c)
    }

    fn reconnect(&mut self) -> Result<(), String> {
        let s = TcpStream::connect_timeout(&self.addr, self.timeout).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(self.timeout))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(self.timeout))
            .map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        self.stream = Some(BufReader::new(s));
        Ok(())
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

    /// One POST; on a broken connection, one reconnect and retry.
    fn post(&mut self, path: &str, body: &str) -> Result<String, String> {
        match self.exchange(path, body) {
            Ok(r) => Ok(r),
            Err(_) => {
                self.reconnect()?;
                self.exchange(path, body)
            }
        }
    }

    fn exchange(&mut self, path: &str, body: &str) -> Result<String, String> {
        let stream = self.stream.as_mut().ok_or("not connected")?;
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        stream
            .get_mut()
            .write_all(req.as_bytes())
            .map_err(|e| e.to_string())?;
        let (status, length, chunked) = read_head(stream)?;
        let text = if chunked {
            read_chunked(stream)?
        } else {
            read_exact(stream, length.unwrap_or(0))?
        };
        if status != 200 {
            return Err(format!("HTTP {status}: {text}"));
        }
        Ok(text)
    }
}

fn read_line(r: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut line = String::new();
    let n = r.read_line(&mut line).map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("connection closed".into());
    }
    Ok(line.trim_end().to_string())
}

/// Status code, Content-Length, whether the body is chunked.
fn read_head(r: &mut BufReader<TcpStream>) -> Result<(u16, Option<usize>, bool), String> {
    let status_line = read_line(r)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(status_line.clone())?;
    let (mut length, mut chunked) = (None, false);
    loop {
        let line = read_line(r)?;
        if line.is_empty() {
            return Ok((status, length, chunked));
        }
        let (name, value) = line.split_once(':').unwrap_or((&line, ""));
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok(),
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            _ => {}
        }
    }
}

fn read_exact(r: &mut BufReader<TcpStream>, n: usize) -> Result<String, String> {
    if n > RESPONSE_BYTES_MAX {
        return Err(format!("response of {n} bytes"));
    }
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf).map_err(|e| e.to_string())?;
    String::from_utf8(buf).map_err(|e| e.to_string())
}

fn read_chunked(r: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let size_line = read_line(r)?;
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| e.to_string())?;
        if size == 0 {
            read_line(r)?;
            return Ok(out);
        }
        out += &read_exact(r, size)?;
        read_line(r)?;
        if out.len() > RESPONSE_BYTES_MAX {
            return Err("response too large".into());
        }
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn sequential_put_latencies_us(
    cluster: &EtcdCluster,
    count: usize,
    value_bytes: usize,
) -> Result<Vec<u64>, String> {
    let mut client = EtcdClient::connect(cluster.member_addr(cluster.leader()?))?;
    let value = vec![b'x'; value_bytes];
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let t = Instant::now();
        client.put(&format!("lat{i}"), &value)?;
        out.push(t.elapsed().as_micros() as u64);
    }
    Ok(out)
}

/// kill -9 of the leader, then puts through the other members in turn until one succeeds.
pub fn failover_ms(cluster: &mut EtcdCluster) -> Result<u64, String> {
    let leader = cluster.leader()?;
    let others: Vec<usize> = (0..MEMBERS).filter(|i| *i != leader).collect();
    let mut clients = Vec::new();
    for i in &others {
        let mut c = EtcdClient::connect(cluster.member_addr(*i))?;
        c.timeout = Duration::from_millis(FAILOVER_CALL_MS);
        c.reconnect()?;
        clients.push(c);
    }
    cluster.kill9(leader);
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(FAILOVER_WAIT_S);
    let (mut k, count) = (0usize, clients.len());
    while Instant::now() < deadline {
        if clients[k % count].put(&format!("fo{k}"), b"1").is_ok() {
            return Ok(killed.elapsed().as_millis() as u64);
        }
        k += 1;
    }
    Err(format!(
        "no successful put within {FAILOVER_WAIT_S} s of the kill"
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
    }
}
