//! Fault injection at the connection level: a [`Gate`] that can refuse new
//! connections (offline) and kill every open one at once (restart, network
//! cut), a listener for axum that honours it, and a stream wrapper that
//! fails when its generation is killed, even while idle.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Whether connections are accepted, and the token of the current
/// generation of connections.
#[derive(Debug)]
pub(crate) struct Gate {
    offline: AtomicBool,
    generation: Mutex<CancellationToken>,
}

impl Gate {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Gate {
            offline: AtomicBool::new(false),
            generation: Mutex::new(CancellationToken::new()),
        })
    }

    pub(crate) fn is_offline(&self) -> bool {
        self.offline.load(Ordering::SeqCst)
    }

    pub(crate) fn set_offline(&self, offline: bool) {
        self.offline.store(offline, Ordering::SeqCst);
        if offline {
            self.kill_all();
        }
    }

    /// Token cancelled when the current generation of connections dies.
    pub(crate) fn token(&self) -> CancellationToken {
        self.generation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Kills every connection accepted so far.
    pub(crate) fn kill_all(&self) {
        let mut g = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        g.cancel();
        *g = CancellationToken::new();
    }
}

/// Drops a connection with a TCP reset, the way a refused or cut connection
/// looks to the client.
pub(crate) fn reset(stream: TcpStream) {
    // SO_LINGER 0 makes close() send RST without blocking.
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// The ARI listener: accepts while online, resets while offline.
#[derive(Debug)]
pub(crate) struct GatedListener {
    pub(crate) inner: TcpListener,
    pub(crate) gate: Arc<Gate>,
}

impl axum::serve::Listener for GatedListener {
    type Io = KillableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    if self.gate.is_offline() {
                        reset(stream);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    return (KillableStream::new(stream, self.gate.token()), addr);
                }
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "ari accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A TCP stream that fails with `ConnectionReset` once its token is
/// cancelled; idle connections notice because reads also wait on the token.
pub(crate) struct KillableStream {
    inner: TcpStream,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
    dead: bool,
}

impl std::fmt::Debug for KillableStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KillableStream")
            .field("dead", &self.dead)
            .finish_non_exhaustive()
    }
}

impl KillableStream {
    pub(crate) fn new(inner: TcpStream, token: CancellationToken) -> Self {
        KillableStream {
            inner,
            killed: Box::pin(token.cancelled_owned()),
            dead: false,
        }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.dead && self.killed.as_mut().poll(cx).is_ready() {
            self.dead = true;
            let _ = self.inner.set_zero_linger();
        }
        if self.dead {
            Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "connection cut by the test",
            ))
        } else {
            Ok(())
        }
    }
}

use std::future::Future as _;

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
