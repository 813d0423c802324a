//! The daemon's figures as Prometheus metrics: written atomically to a
//! node_exporter textfile directory (`textfile`) and, if asked, served on a
//! loopback HTTP port (`http`).
//!
//! One model, two renderers (`render`): the Prometheus text format 0.0.4,
//! the only one node_exporter's textfile collector and `promtool check
//! metrics` parse, and OpenMetrics 1.0.0 for an HTTP scraper that asks for
//! it. The model (`table`) is built from the same `DaemonStatus` that
//! `unrm status` shows, asked for through the socket server's own handler as
//! root: the metrics always equal what `unrm status` says, and this module
//! never reaches into the engine.

mod http;
mod render;
mod table;
mod textfile;

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use tokio::sync::Mutex;

use crate::{
    access::Caller,
    api::{
        proto::{DaemonStatus, Request, Response},
        server::Handler,
    },
};

use table::families;

/// What a family is, as both formats name it (`Info` is a gauge named
/// `*_info` in the text format).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Info,
    Histogram,
}

/// One metric family: its full name in the text format (a counter's ends
/// in `_total`, an info's in `_info`), what it means, its samples.
#[derive(Clone, Debug)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

#[derive(Clone, Debug)]
pub struct Sample {
    pub labels: Vec<(&'static str, String)>,
    pub value: Value,
}

#[derive(Clone, Debug)]
pub enum Value {
    Number(u64),
    Histogram(Histogram),
}

/// Cumulative buckets (upper bound in the family's unit, samples at or
/// under it), without `+Inf`: that one is `count`.
#[derive(Clone, Debug)]
pub struct Histogram {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

/// How long the engine may take to answer before a write or scrape gives up.
const ASK_WITHIN: Duration = Duration::from_secs(10);
/// A scrape within this long of the previous one is answered with the same
/// figures: however often local users scrape, the engine is asked at most
/// once a second.
const FRESH_FOR: Duration = Duration::from_secs(1);
/// Bounds on how often the textfile is rewritten (at the engine's rescan
/// interval, within these).
const WRITE_AT_MOST_EVERY: Duration = Duration::from_secs(1);
const WRITE_AT_LEAST_EVERY: Duration = Duration::from_secs(15);

/// The daemon's status, asked through the socket server's handler as root,
/// one request at a time, reused for `FRESH_FOR`.
pub struct Source {
    handler: Handler,
    last: Mutex<Option<(Instant, Arc<DaemonStatus>)>>,
}

impl Source {
    pub fn new(handler: Handler) -> Self {
        Source { handler, last: Mutex::new(None) }
    }

    /// The status, no older than `FRESH_FOR`.
    pub async fn status(&self) -> Result<Arc<DaemonStatus>> {
        let mut last = self.last.lock().await;
        if let Some((at, status)) = &*last
            && at.elapsed() < FRESH_FOR
        {
            return Ok(status.clone());
        }
        let status = Arc::new(self.ask().await?);
        *last = Some((Instant::now(), status.clone()));
        Ok(status)
    }

    async fn ask(&self) -> Result<DaemonStatus> {
        let root = Caller { uid: 0, groups: HashSet::from([0]) };
        let answer = tokio::time::timeout(ASK_WITHIN, (self.handler)(Request::Status, root)).await;
        match answer {
            Ok(Ok(reply)) => match reply.response {
                Response::Status { status } => Ok(status),
                Response::Error { message } => bail!("the engine refused its status: {message}"),
                _ => bail!("the engine answered a status request with something else"),
            },
            Ok(Err(_)) => bail!("the engine is shutting down"),
            Err(_) => bail!("the engine did not answer within {}s", ASK_WITHIN.as_secs()),
        }
    }
}

/// Where the metrics go, checked before the daemon says it is ready: a
/// directory that is not one, or an address that is not loopback, is one
/// clear error at start.
pub struct Prepared {
    textfile: Option<textfile::Dir>,
    listener: Option<(SocketAddr, std::net::TcpListener)>,
}

/// The metrics at work; `finish` writes the textfile a last time.
pub struct Running {
    source: Arc<Source>,
    textfile: Option<Arc<textfile::Dir>>,
}

pub fn prepare(textfile: Option<&Path>, listen: Option<SocketAddr>) -> Result<Prepared> {
    let textfile = textfile.map(textfile::Dir::check).transpose()?;
    let listener = listen.map(|addr| http::bind(addr).map(|l| (addr, l))).transpose()?;
    Ok(Prepared { textfile, listener })
}

impl Prepared {
    /// Starts writing and serving, on the current tokio runtime.
    pub fn start(self, handler: Handler, rescan_every: Duration) -> Result<Running> {
        let source = Arc::new(Source::new(handler));
        if let Some((addr, listener)) = self.listener {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            log::info!("serving metrics on http://{addr}/metrics");
            tokio::spawn(http::serve(listener, source.clone()));
        }
        let textfile = self.textfile.map(Arc::new);
        if let Some(dir) = &textfile {
            let every = rescan_every.clamp(WRITE_AT_MOST_EVERY, WRITE_AT_LEAST_EVERY);
            log::info!("writing metrics to {} every {}s", dir.target().display(), every.as_secs_f64());
            tokio::spawn(textfile::keep_writing(dir.clone(), source.clone(), every));
        }
        Ok(Running { source, textfile })
    }
}

impl Running {
    /// At shutdown, while the engine still answers: the figures as they end.
    pub async fn finish(self) {
        if let Some(dir) = self.textfile {
            textfile::write_once(&dir, &self.source).await;
        }
    }
}
