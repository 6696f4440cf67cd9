//! A TCP proxy that can cut every connection on demand: a database (or
//! any dependency) outage in a test.

use std::net::SocketAddr;

/// A TCP proxy to `target` that can be switched off, cutting every open
/// connection and refusing new ones, and on again: a database outage on
/// demand.
pub struct TcpProxy {
    /// Where to connect instead of `target`.
    pub addr: SocketAddr,
    enabled: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding to `target`.
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (enabled, watch) = tokio::sync::watch::channel(true);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !*watch.borrow() {
                    drop(inbound);
                    continue;
                }
                let mut off = watch.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = off.wait_for(|on| !*on) => {}
                    }
                });
            }
        });
        TcpProxy {
            addr,
            enabled,
            task,
        }
    }

    /// Cuts every connection and refuses new ones (`false`), or forwards
    /// again (`true`).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.send_replace(on);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
