//! Serves the socket: one task per connection, any number of requests per
//! connection, each answered in order. A malformed request gets an error
//! response and the connection stays usable; a frame over the size limit
//! closes the connection, since its remaining bytes cannot be trusted.
//!
//! The socket is open to every local user, so nothing a client does may
//! stop it serving the others: connections are capped in all and per user,
//! a client that sends nothing, sends slowly or does not read its answer is
//! dropped after `Limits::client_timeout`, at most `MAX_QUEUED` requests
//! wait for the engine at once, and a failing accept(2) (no descriptors
//! left) is retried after a pause instead of ending the server.

use std::{
    collections::HashMap,
    io::{self, IoSlice},
    mem::MaybeUninit,
    os::{
        fd::{AsFd, OwnedFd},
        unix::fs::{FileTypeExt, PermissionsExt},
    },
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, Interest},
    net::{UnixListener, UnixStream},
    sync::{Semaphore, mpsc, oneshot},
    time::timeout,
};

use super::proto::{MAX_REQUEST, Request, Response, body_len, frame, parse_request};
use crate::access::Caller;

/// Connections open at once, in all and per user (root excepted from the
/// latter). A CLI command uses one, briefly.
pub const MAX_CONNECTIONS: usize = 128;
pub const MAX_PER_USER: usize = 16;
/// Requests waiting for the engine at once, across all connections.
const MAX_QUEUED: usize = 32;
/// How long an answer may take (a held file's restore waits on its
/// filesystem) before the client is told so.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);
/// After a failed accept(2), how long to wait before the next.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// An answer, and for `Open` the descriptor that goes with it; for
/// `Follow`, what is sent after it.
pub struct Reply {
    pub response: Response,
    pub fd: Option<OwnedFd>,
    pub stream: Option<mpsc::Receiver<Followed>>,
}

/// What a follower is sent after its first answer.
#[derive(Debug)]
pub enum Followed {
    /// One event, as a JSON object (it goes to every follower as it is).
    Event(Arc<str>),
    /// It fell behind by this many events and is cut off.
    Behind(usize),
}

impl Reply {
    pub fn new(response: Response) -> Self {
        Reply { response, fd: None, stream: None }
    }

    pub fn with_fd(response: Response, fd: OwnedFd) -> Self {
        Reply { response, fd: Some(fd), stream: None }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Reply::new(Response::Error { message: message.into() })
    }
}

/// Hands a request, and who sent it, to whoever answers it.
pub type Handler = Arc<dyn Fn(Request, Caller) -> oneshot::Receiver<Reply> + Send + Sync>;

/// How long a client may take to send a request or read an answer.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub client_timeout: Duration,
}

/// What the server has seen, for `unrm status`.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub open: AtomicU64,
    /// Connections refused (over a limit).
    pub refused: AtomicU64,
    /// Clients dropped for idling or for being too slow.
    pub dropped: AtomicU64,
    pub accept_errors: AtomicU64,
}

/// Binds `path` for every local user (each is told apart by its kernel
/// credentials), replacing a stale socket but nothing else.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("{} exists and is not a socket; refusing to replace it", path.display());
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another daemon is serving {}", path.display());
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        public_dir(dir)?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Creates `dir` (and its missing parents) searchable by everyone, so that
/// any user can reach the socket inside; an existing directory is left as
/// it is (under systemd, `RuntimeDirectory=` made it). Then refuses a
/// directory anyone but root could change: there, someone could swap the
/// socket for a symbolic link between its creation and its chmod, or
/// replace it and pose as the daemon.
pub fn public_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    for d in missing.into_iter().rev() {
        // The daemon's umask (077) would make each root's alone.
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(d)
            .with_context(|| format!("creating {}", d.display()))?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    }
    let meta = std::fs::symlink_metadata(dir).with_context(|| format!("{}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        bail!("{} is not a directory only root can change; refusing to serve a socket there", dir.display());
    }
    Ok(())
}

/// Who is connected, to keep within the caps.
#[derive(Default)]
struct Connected {
    total: usize,
    by_uid: HashMap<u32, usize>,
}

/// One connection's place among the connected; given back when dropped.
struct Slot {
    connected: Arc<Mutex<Connected>>,
    stats: Arc<ServerStats>,
    uid: u32,
}

impl Slot {
    fn take(connected: &Arc<Mutex<Connected>>, stats: &Arc<ServerStats>, uid: u32) -> Option<Slot> {
        let mut c = connected.lock().unwrap();
        let mine = c.by_uid.get(&uid).copied().unwrap_or(0);
        if c.total >= MAX_CONNECTIONS || (uid != 0 && mine >= MAX_PER_USER) {
            return None;
        }
        c.total += 1;
        *c.by_uid.entry(uid).or_default() += 1;
        stats.open.fetch_add(1, Ordering::Relaxed);
        Some(Slot { connected: connected.clone(), stats: stats.clone(), uid })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.connected.lock().unwrap();
        c.total -= 1;
        if let Some(n) = c.by_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                c.by_uid.remove(&self.uid);
            }
        }
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn serve(listener: UnixListener, handler: Handler, limits: Limits, stats: Arc<ServerStats>) {
    let connected = Arc::new(Mutex::new(Connected::default()));
    let queue = Arc::new(Semaphore::new(MAX_QUEUED));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                let errors = stats.accept_errors.fetch_add(1, Ordering::Relaxed) + 1;
                if errors.is_power_of_two() {
                    log::warn!("accepting a client failed ({err}); retrying ({errors} failures so far)");
                }
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let Ok(cred) = stream.peer_cred() else { continue };
        let Some(slot) = Slot::take(&connected, &stats, cred.uid()) else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            refuse(&stream);
            continue;
        };
        let caller = Caller::of_peer(stream.as_fd(), cred.uid(), cred.gid());
        let (handler, queue, stats) = (handler.clone(), queue.clone(), stats.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match connection(stream, caller, handler, queue, limits).await {
                Ok(()) => {}
                Err(err) if err.downcast_ref::<TooSlow>().is_some() => {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    log::debug!("client dropped: {err}");
                }
                Err(err) => log::debug!("client connection ended: {err:#}"),
            }
        });
    }
}

/// Tells a client over a limit why, if it can without waiting.
fn refuse(stream: &UnixStream) {
    let message = format!(
        "too many connections to the unrm daemon (at most {MAX_PER_USER} per user, {MAX_CONNECTIONS} in all); \
         try again"
    );
    let _ = stream.try_write(&frame(&Response::Error { message }));
}

#[derive(Debug)]
struct TooSlow(&'static str);

impl std::fmt::Display for TooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for TooSlow {}

async fn connection(
    mut stream: UnixStream,
    caller: Caller,
    handler: Handler,
    queue: Arc<Semaphore>,
    limits: Limits,
) -> Result<()> {
    let within = limits.client_timeout;
    loop {
        let mut header = [0u8; 4];
        match timeout(within, stream.read_exact(&mut header)).await {
            Err(_) => return Err(TooSlow("sent no request in time").into()),
            Ok(Ok(_)) => {}
            Ok(Err(err)) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(err)) => return Err(err.into()),
        }
        let len = match body_len(header, MAX_REQUEST) {
            Ok(len) => len,
            Err(err) => {
                let _ = timeout(within, send(&mut stream, Reply::error(format!("{err:#}")))).await;
                return Ok(());
            }
        };
        let mut body = vec![0u8; len];
        timeout(within, stream.read_exact(&mut body))
            .await
            .map_err(|_| TooSlow("sent its request too slowly"))??;
        let mut reply = match parse_request(&body) {
            Ok(request) => ask(&handler, &queue, request, &caller).await,
            Err(err) => Reply::error(format!("{err:#}")),
        };
        let events = reply.stream.take();
        timeout(within, send(&mut stream, reply))
            .await
            .map_err(|_| TooSlow("did not read its answer in time"))??;
        if let Some(events) = events {
            return follow(stream, events, within).await;
        }
    }
}

/// Sends a follower its events until it hangs up, falls behind, or the
/// daemon stops. It may send nothing more; anything it sends ends it.
async fn follow(
    mut stream: UnixStream,
    mut events: mpsc::Receiver<Followed>,
    within: Duration,
) -> Result<()> {
    let mut byte = [0u8; 1];
    loop {
        let frame = tokio::select! {
            _ = stream.read(&mut byte) => return Ok(()),
            next = events.recv() => match next {
                Some(Followed::Event(json)) => event_frame(&json),
                Some(Followed::Behind(n)) => frame(&Response::Error {
                    message: format!("this follower fell {n} events behind and was cut off; follow again"),
                }),
                None => return Ok(()),
            },
        };
        timeout(within, stream.write_all(&frame))
            .await
            .map_err(|_| TooSlow("did not read its events in time"))??;
    }
}

/// `Response::Event` around an event already in JSON, without parsing it again.
fn event_frame(event: &str) -> Vec<u8> {
    let head = r#"{"type":"event","event":"#;
    let len = (head.len() + event.len() + 1) as u32;
    let mut out = Vec::with_capacity(4 + len as usize);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(event.as_bytes());
    out.push(b'}');
    out
}

/// Queues `request` for the engine, within `MAX_QUEUED`, and waits for the
/// answer within `ANSWER_WITHIN`.
async fn ask(handler: &Handler, queue: &Semaphore, request: Request, caller: &Caller) -> Reply {
    let Ok(Ok(_permit)) = timeout(ANSWER_WITHIN, queue.acquire()).await else {
        return Reply::error("the daemon is busy; try again");
    };
    match timeout(ANSWER_WITHIN, handler(request, caller.clone())).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => Reply::error("the daemon is shutting down"),
        Err(_) => Reply::error(format!(
            "no answer within {}s (the file's filesystem may not be answering)",
            ANSWER_WITHIN.as_secs()
        )),
    }
}

async fn send(stream: &mut UnixStream, reply: Reply) -> Result<()> {
    let bytes = frame(&reply.response);
    let mut sent = 0;
    if let Some(fd) = &reply.fd {
        // The descriptor rides on the frame's first bytes.
        sent = stream
            .async_io(Interest::WRITABLE, || {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut ancillary = SendAncillaryBuffer::new(&mut space);
                let fds = [fd.as_fd()];
                ancillary.push(SendAncillaryMessage::ScmRights(&fds));
                sendmsg(&*stream, &[IoSlice::new(&bytes)], &mut ancillary, SendFlags::NOSIGNAL)
                    .map_err(io::Error::from)
            })
            .await?;
    }
    stream.write_all(&bytes[sent..]).await?;
    Ok(())
}
