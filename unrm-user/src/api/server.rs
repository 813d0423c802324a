//! Serves the socket: one task per connection, any number of requests per
//! connection, each answered in order. A malformed request gets an error
//! response and the connection stays usable; a frame over the size limit
//! closes the connection, since its remaining bytes cannot be trusted.

use std::{
    io::{self, IoSlice},
    mem::MaybeUninit,
    os::{
        fd::{AsFd, OwnedFd},
        unix::fs::{FileTypeExt, PermissionsExt},
    },
    path::Path,
    sync::Arc,
};

use anyhow::{Context, Result, bail};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, Interest},
    net::{UnixListener, UnixStream},
    sync::oneshot,
};

use super::proto::{MAX_REQUEST, Request, Response, body_len, frame, parse_request};
use crate::access::Caller;

/// An answer, and for `Open` the descriptor that goes with it.
pub struct Reply {
    pub response: Response,
    pub fd: Option<OwnedFd>,
}

impl Reply {
    pub fn error(message: impl Into<String>) -> Self {
        Reply { response: Response::Error { message: message.into() }, fd: None }
    }
}

/// Hands a request, and who sent it, to whoever answers it.
pub type Handler = Arc<dyn Fn(Request, Caller) -> oneshot::Receiver<Reply> + Send + Sync>;

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
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, handler: Handler) -> Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(err) = connection(stream, handler).await {
                log::debug!("client connection ended: {err:#}");
            }
        });
    }
}

async fn connection(mut stream: UnixStream, handler: Handler) -> Result<()> {
    let cred = stream.peer_cred()?;
    let caller = Caller::from_peer(cred.uid(), cred.gid(), cred.pid());
    loop {
        let mut header = [0u8; 4];
        match stream.read_exact(&mut header).await {
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(err) => return Err(err.into()),
        }
        let len = match body_len(header, MAX_REQUEST) {
            Ok(len) => len,
            Err(err) => {
                send(&mut stream, Reply::error(format!("{err:#}"))).await?;
                return Ok(());
            }
        };
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await?;
        let reply = match parse_request(&body) {
            Ok(request) => handler(request, caller.clone())
                .await
                .unwrap_or_else(|_| Reply::error("the daemon is shutting down")),
            Err(err) => Reply::error(format!("{err:#}")),
        };
        send(&mut stream, reply).await?;
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
