//! The CLI's side of the socket: blocking, one request at a time, with
//! errors that tell the user what to do.

use std::{
    io::{self, IoSliceMut, Read, Write},
    mem::MaybeUninit,
    os::{fd::OwnedFd, unix::net::UnixStream},
    path::Path,
};

use anyhow::{Context, Result, bail};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};

use super::proto::{MAX_RESPONSE, Request, Response, body_len, frame};

pub struct Client {
    stream: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Self> {
        match UnixStream::connect(path) {
            Ok(stream) => Ok(Self { stream }),
            Err(err) => Err(anyhow::Error::msg(connect_error(path, &err))),
        }
    }

    /// Sends `request` and returns the response; an `Error` response becomes
    /// an `Err` carrying the daemon's message.
    pub fn call(&mut self, request: &Request) -> Result<(Response, Option<OwnedFd>)> {
        self.stream.write_all(&frame(request)).context("sending to the daemon")?;
        self.receive("reading the daemon's answer", "decoding the daemon's answer")
    }

    /// The next message the daemon sends on its own (a follower's events);
    /// an `Error` becomes an `Err`, the daemon hanging up too.
    pub fn next(&mut self) -> Result<Response> {
        Ok(self.receive("the daemon stopped sending events", "decoding an event")?.0)
    }

    /// One message and the descriptor that came with it; an `Error` becomes
    /// an `Err` carrying the daemon's message.
    fn receive(
        &mut self,
        reading: &'static str,
        decoding: &'static str,
    ) -> Result<(Response, Option<OwnedFd>)> {
        let (header, fd) = self.read_header().context(reading)?;
        let len = body_len(header, MAX_RESPONSE)?;
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).context(reading)?;
        let response: Response = serde_json::from_slice(&body).context(decoding)?;
        if let Response::Error { message } = response {
            bail!("{message}");
        }
        Ok((response, fd))
    }

    /// Reads the 4-byte header with `recvmsg`, so a descriptor sent with the
    /// frame is received rather than dropped.
    fn read_header(&mut self) -> io::Result<([u8; 4], Option<OwnedFd>)> {
        let mut header = [0u8; 4];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut ancillary = RecvAncillaryBuffer::new(&mut space);
        let got = recvmsg(
            &self.stream,
            &mut [IoSliceMut::new(&mut header)],
            &mut ancillary,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        let mut fd = None;
        for message in ancillary.drain() {
            if let RecvAncillaryMessage::ScmRights(mut fds) = message {
                fd = fds.next();
            }
        }
        if got.bytes == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the daemon closed the connection"));
        }
        self.stream.read_exact(&mut header[got.bytes..])?;
        Ok((header, fd))
    }
}

fn connect_error(path: &Path, err: &io::Error) -> String {
    let at = path.display();
    match err.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            format!("the unrm daemon is not running (nothing listens on {at}); start it with `unrm daemon`")
        }
        io::ErrorKind::PermissionDenied => {
            format!("permission denied on {at}: the daemon's socket is root-only; run as root")
        }
        _ => format!("cannot reach the unrm daemon at {at}: {err}"),
    }
}
