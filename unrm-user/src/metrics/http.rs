//! `GET /metrics` on a loopback address, for a scraper on the same machine
//! (or one reaching it through a tunnel the administrator set up). Off by
//! default; never on another address: unrm has no authentication to offer,
//! and its figures are the machine's business.
//!
//! Every local user can connect to loopback, so nothing a client does may
//! cost the daemon much: at most `MAX_CONNECTIONS` at once (others are
//! closed unanswered), a request head of at most `MAX_HEAD` bytes read
//! within `READ_WITHIN`, one answer per connection (`Connection: close`),
//! written within `WRITE_WITHIN`, and the engine asked at most once a
//! second however many scrapes arrive (`Source`).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::timeout,
};

use super::{
    Source, families,
    render::{self, Format},
};

const MAX_CONNECTIONS: usize = 8;
const MAX_HEAD: usize = 8 * 1024;
const READ_WITHIN: Duration = Duration::from_secs(5);
const WRITE_WITHIN: Duration = Duration::from_secs(10);
/// After a failed accept(2), how long to wait before the next.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Binds `addr`, which must be a loopback address.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    if !addr.ip().is_loopback() {
        bail!(
            "metrics listen address {addr} is not a loopback address; unrm serves metrics on 127.0.0.0/8 or [::1] \
             only (or write them for node_exporter with --metrics-textfile)"
        );
    }
    std::net::TcpListener::bind(addr).map_err(|err| {
        // The packaged unit allows Unix sockets only, unless a drop-in says otherwise.
        let hint = if err.raw_os_error() == Some(libc::EAFNOSUPPORT) {
            " (under the packaged unit, the drop-in in docs/service.md allows the listener)"
        } else {
            ""
        };
        anyhow::anyhow!("metrics listen address {addr}: {err}{hint}")
    })
}

pub async fn serve(listener: TcpListener, source: Arc<Source>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                log::debug!("metrics: accept failed: {err}");
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let source = source.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(err) = answer(stream, &source).await {
                log::debug!("metrics: {err:#}");
            }
        });
    }
}

/// What a request asked for, or the status it gets instead.
enum Asked {
    Metrics(Format),
    Refused(&'static str),
}

async fn answer(mut stream: TcpStream, source: &Source) -> Result<()> {
    let asked = match timeout(READ_WITHIN, read_head(&mut stream)).await {
        Err(_) => bail!("a client sent no request in time"),
        Ok(Err(err)) => return Err(err),
        Ok(Ok(None)) => Asked::Refused("431 Request Header Fields Too Large"),
        Ok(Ok(Some(head))) => parse(&head),
    };
    let (status, content_type, body) = match asked {
        Asked::Metrics(format) => match source.status().await {
            Ok(status) => ("200 OK", format.content_type(), render::render(&families(&status), format)),
            Err(err) => ("503 Service Unavailable", "text/plain; charset=utf-8", format!("{err:#}\n")),
        },
        Asked::Refused(status) => (status, "text/plain; charset=utf-8", format!("{status}\n")),
    };
    let allow = if status.starts_with("405") { "Allow: GET\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    };
    timeout(WRITE_WITHIN, write).await.context("a client did not read its answer in time")??;
    Ok(())
}

/// The request's head (up to the blank line), or None when it is over `MAX_HEAD`.
async fn read_head(stream: &mut TcpStream) -> Result<Option<String>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            bail!("a client closed before the end of its request");
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(Some(String::from_utf8_lossy(&head).into_owned()))
}

fn parse(head: &str) -> Asked {
    let mut lines = head.split("\r\n");
    let mut request = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version)) = (request.next(), request.next(), request.next()) else {
        return Asked::Refused("400 Bad Request");
    };
    if !version.starts_with("HTTP/1.") || request.next().is_some() {
        return Asked::Refused("400 Bad Request");
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path != "/metrics" {
        return Asked::Refused("404 Not Found");
    }
    if method != "GET" {
        return Asked::Refused("405 Method Not Allowed");
    }
    let accept = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("accept"))
        .map(|(_, value)| value.trim());
    Asked::Metrics(render::negotiate(accept))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(head: &str) -> &'static str {
        match parse(head) {
            Asked::Metrics(Format::Text) => "text",
            Asked::Metrics(Format::OpenMetrics) => "openmetrics",
            Asked::Refused(status) => status,
        }
    }

    #[test]
    fn requests_are_routed() {
        assert_eq!(status_of("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), "text");
        assert_eq!(status_of("GET /metrics?x=1 HTTP/1.0\r\n\r\n"), "text");
        let om = "GET /metrics HTTP/1.1\r\naccept: application/openmetrics-text; version=1.0.0\r\n\r\n";
        assert_eq!(status_of(om), "openmetrics");
        assert_eq!(status_of("GET / HTTP/1.1\r\n\r\n"), "404 Not Found");
        assert_eq!(status_of("POST /metrics HTTP/1.1\r\n\r\n"), "405 Method Not Allowed");
        assert_eq!(status_of("GET /metrics\r\n\r\n"), "400 Bad Request");
        assert_eq!(status_of("GET /metrics SPDY/3 x\r\n\r\n"), "400 Bad Request");
    }

    #[test]
    fn only_loopback_addresses_are_bound() {
        let err = bind("0.0.0.0:0".parse().unwrap()).unwrap_err().to_string();
        assert!(err.contains("not a loopback address"), "{err}");
        assert!(bind("127.0.0.1:0".parse().unwrap()).is_ok());
    }
}
