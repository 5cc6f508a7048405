//! A TCP proxy in front of the shared broker that a test can cut: the worker's broker connection
//! is lost (and new ones are refused) without touching the broker the other tests use.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct TcpProxy {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    /// Cancelling it ends every connection piped so far; replaced on each cut.
    generation: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let open = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (open_, generation_, stop_) = (open.clone(), generation.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop_.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut client, _)) = accepted else { continue };
                if !open_.load(Ordering::Acquire) {
                    // Refused: the connection is closed before a byte is exchanged.
                    drop(client);
                    continue;
                }
                let cut = generation_.lock().expect("generation lock").clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                });
            }
        });
        Self {
            addr,
            open,
            generation,
            stop,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every proxied connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.open.store(false, Ordering::Release);
        let mut generation = self.generation.lock().expect("generation lock");
        generation.cancel();
        *generation = CancellationToken::new();
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::Release);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.generation.lock().expect("generation lock").cancel();
    }
}
