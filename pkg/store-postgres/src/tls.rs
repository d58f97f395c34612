//! TLS for tokio-postgres over the workspace's rustls (ring), without a
//! third-party adapter crate: the server certificate is verified by the core's
//! rustls configuration (a CA file, or not verified for `sslmode=require`).
//! No channel binding: SCRAM-SHA-256 without `-PLUS`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use clustermon_core::check::tls::client_config;
use clustermon_core::model::Credentials;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use crate::url::{PostgresUrl, SslMode};

/// Makes TLS connections; `None` for `sslmode=disable` (never asked then).
#[derive(Clone)]
pub struct Tls(Option<tokio_rustls::TlsConnector>);

impl Tls {
    pub fn for_url(url: &PostgresUrl) -> Result<Self, String> {
        if url.password_in_url {
            return Err("postgres store URL must not carry a password: use --postgres-password-file or PGPASSWORD".into());
        }
        let creds = match url.sslmode {
            SslMode::Disable => return Ok(Tls(None)),
            SslMode::Require => Credentials {
                insecure_skip_tls_verify: true,
                ..Default::default()
            },
            SslMode::VerifyFull => {
                let path = url.sslrootcert.as_ref().ok_or(
                    "postgres sslmode=verify-full needs sslrootcert=CA_FILE in the store URL (or sslmode=require, or sslmode=disable on a trusted network)",
                )?;
                let pem = std::fs::read_to_string(path)
                    .map_err(|e| format!("postgres sslrootcert {}: {e}", path.display()))?;
                Credentials {
                    ca_bundle: Some(pem),
                    ..Default::default()
                }
            }
        };
        let mut config = client_config(&creds, true).map_err(|e| format!("postgres TLS: {e}"))?;
        config.alpn_protocols.clear();
        Ok(Tls(Some(tokio_rustls::TlsConnector::from(Arc::new(
            config,
        )))))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> MakeTlsConnect<S> for Tls {
    type Stream = TlsStream<S>;
    type TlsConnect = Connect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<Connect> {
        // Asked for every host even with sslmode=disable, where it is never used.
        let connector = self.0.clone();
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Connect { connector, name })
    }
}

pub struct Connect {
    connector: Option<tokio_rustls::TlsConnector>,
    name: ServerName<'static>,
}

type ConnectFuture<S> = Pin<Box<dyn Future<Output = io::Result<TlsStream<S>>> + Send>>;

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> TlsConnect<S> for Connect {
    type Stream = TlsStream<S>;
    type Error = io::Error;
    type Future = ConnectFuture<S>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let connector = self
                .connector
                .ok_or_else(|| io::Error::other("TLS asked with sslmode=disable"))?;
            Ok(TlsStream(connector.connect(self.name, stream).await?))
        })
    }
}

pub struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
