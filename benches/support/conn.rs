//! A persistent client connection to one instance, for the benchmarks: one
//! handshake, then requests on streams of it (as a long-lived client would).

use claro::proto::{Request, Response};

use crate::common::Cluster;

pub struct Conn {
    _ep: claro::transport::Endpoint,
    conn: quinn::Connection,
}

impl Conn {
    pub fn open(c: &Cluster, name: &str) -> Conn {
        let cfg = c.config();
        let server = cfg.server(name).expect("configured").clone();
        let ep = claro::cli::client::endpoint(&cfg, server.address).expect("client endpoint");
        let conn =
            async_std::task::block_on(ep.connect(server.address, name, 2000)).expect("connect");
        Conn { _ep: ep, conn }
    }

    /// One request and its answer, within `timeout_ms`.
    pub async fn ask(&self, req: &Request, timeout_ms: u64) -> Result<Response, String> {
        claro::cli::client::request(&self.conn, req, timeout_ms).await
    }
}
