//! The accept loop: TCP connections become TLS connections here, within a
//! handshake timeout and the connection caps, before tonic sees them.
//!
//! Owns: `--tls-handshake-timeout`, `--max-connections`,
//! `--max-unauthenticated-connections`,
//! `--unauthenticated-connection-lifetime`, TCP keepalive, and surviving
//! accept errors (such as running out of file descriptors). Does not own:
//! HTTP/2 and gRPC limits (tonic's builder, in `start`), nor who a client
//! certificate names (checked per call).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

use super::limits::Limits;

/// After an accept error (e.g. no file descriptor left) the loop waits
/// this long before accepting again, so that it does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A TLS connection handed to tonic. It holds its place among all
/// connections and, while it has not authenticated, among those; a
/// connection without a client certificate ends after the
/// unauthenticated-connection lifetime.
#[derive(Debug)]
pub struct Connection {
    stream: TlsStream<TcpStream>,
    /// Released when the connection closes.
    _place: OwnedSemaphorePermit,
    /// Held only by a connection without a client certificate.
    _unauthenticated: Option<OwnedSemaphorePermit>,
    /// When a connection without a client certificate is cut.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Connection {
    fn check_deadline(&mut self, context: &mut Context<'_>) -> io::Result<()> {
        let expired = self
            .deadline
            .as_mut()
            .is_some_and(|deadline| deadline.as_mut().poll(context).is_ready());
        if expired {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "a connection without a client certificate reached its lifetime (--unauthenticated-connection-lifetime)",
            ));
        }
        Ok(())
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // hyper always keeps a read pending, so the deadline's wake-up
        // reaches the connection even when it is idle.
        this.check_deadline(context)?;
        Pin::new(&mut this.stream).poll_read(context, buffer)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(context, data)
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(context)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The TLS stream's connect info, so that `Request::peer_certs` works as
/// with tonic's own TLS.
impl Connected for Connection {
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// Accepts on `listener` until `stop` turns true or tonic stops taking
/// connections, and sends every connection whose TLS handshake succeeded
/// within the limits to `connections`.
pub async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: Limits,
    connections: mpsc::Sender<io::Result<Connection>>,
    mut stop: watch::Receiver<bool>,
) {
    let places = Arc::new(Semaphore::new(limits.max_connections));
    let unauthenticated = Arc::new(Semaphore::new(limits.max_unauthenticated_connections));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => return,
            () = connections.closed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE, ENFILE, ECONNABORTED...: this connection is lost,
                // the server is not.
                tracing::warn!(error = %error, "accepting a connection failed; going on");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            tracing::debug!(%peer, limit = limits.max_connections, "connection refused: --max-connections reached");
            continue;
        };
        let Ok(handshaking) = unauthenticated.clone().try_acquire_owned() else {
            tracing::debug!(%peer, limit = limits.max_unauthenticated_connections, "connection refused: --max-unauthenticated-connections reached");
            continue;
        };
        configure(&tcp, &limits);
        let acceptor = acceptor.clone();
        let connections = connections.clone();
        let mut stop = stop.clone();
        let handshake_timeout = limits.tls_handshake_timeout;
        let lifetime = limits.unauthenticated_connection_lifetime;
        tokio::spawn(async move {
            let stream = tokio::select! {
                handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)) => handshake,
                _ = stop.wait_for(|stopped| *stopped) => return,
            };
            let stream = match stream {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, error = %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, timeout = ?handshake_timeout, "TLS handshake timed out (--tls-handshake-timeout)");
                    return;
                }
            };
            let has_certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|chain| !chain.is_empty());
            let connection = if has_certificate {
                drop(handshaking);
                Connection {
                    stream,
                    _place: place,
                    _unauthenticated: None,
                    deadline: None,
                }
            } else {
                Connection {
                    stream,
                    _place: place,
                    _unauthenticated: Some(handshaking),
                    deadline: Some(Box::pin(tokio::time::sleep(lifetime))),
                }
            };
            let _ = connections.send(Ok(connection)).await;
        });
    }
}

/// TCP settings of an accepted socket; a failure only loses the setting.
fn configure(tcp: &TcpStream, limits: &Limits) {
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(error = %error, "cannot set TCP_NODELAY");
    }
    let keepalive = TcpKeepalive::new()
        .with_time(limits.tcp_keepalive)
        .with_interval(limits.tcp_keepalive);
    if let Err(error) = SockRef::from(tcp).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %error, "cannot set TCP keepalive");
    }
}
