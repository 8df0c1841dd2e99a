//! One TLS connection to a [`Target`]: TCP (through an explicit proxy's
//! CONNECT tunnel if there is one), then a verified TLS handshake speaking
//! HTTP/1.1.

use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use crate::{Target, certs};

pub fn connector(target: &Target) -> Result<TlsConnector> {
    connector_with_alpn(target, b"http/1.1")
}

/// [`connector`] offering only `alpn`.
pub fn connector_with_alpn(target: &Target, alpn: &[u8]) -> Result<TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(certs::roots(&target.ca)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

pub async fn connect(target: &Target, tls: &TlsConnector) -> Result<TlsStream<TcpStream>> {
    anyhow::ensure!(
        target.addr.ip().is_loopback() && target.proxy.is_none_or(|p| p.ip().is_loopback()),
        "the bench dials loopback addresses only"
    );
    let tcp = match target.proxy {
        None => TcpStream::connect(target.addr).await,
        Some(proxy) => TcpStream::connect(proxy).await,
    }
    .context("TCP connect failed")?;
    tcp.set_nodelay(true)?;
    let mut tcp = tcp;
    if target.proxy.is_some() {
        connect_tunnel(&mut tcp, &format!("{}:{}", target.sni, target.addr.port())).await?;
    }
    let name = ServerName::try_from(target.sni.clone())?;
    tls.connect(name, tcp).await.context("TLS handshake failed")
}

/// `CONNECT authority` (RFC 9110 §9.3.6) and its 2xx answer.
async fn connect_tunnel(tcp: &mut TcpStream, authority: &str) -> Result<()> {
    tcp.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte: nothing after the blank line may be consumed here, it
    // belongs to the TLS handshake. Bounded: a proxy's answer is short.
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || tcp.read(&mut byte).await? == 0 {
            bail!("proxy closed or sent an oversized answer to CONNECT");
        }
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head);
    if !status.starts_with("HTTP/1.1 2") && !status.starts_with("HTTP/1.0 2") {
        bail!(
            "proxy refused CONNECT: {}",
            status.lines().next().unwrap_or("")
        );
    }
    Ok(())
}
