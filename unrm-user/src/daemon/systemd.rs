//! Telling a service manager how the daemon is (`sd_notify(3)`'s protocol,
//! for a `Type=notify` unit): `READY=1` once the probes are attached, the
//! start-up scan is done and the socket listens; `RELOADING=1` (with the
//! monotonic time systemd 253+ wants) and `READY=1` around a policy reload;
//! `STATUS=` with the tier, then from the engine with its key counters at
//! every snapshot; `WATCHDOG=1` from the engine's loop, so that a
//! stuck engine gets the daemon restarted. Without `$NOTIFY_SOCKET` (not
//! under systemd) every call does nothing.

use std::{
    os::unix::net::{SocketAddr, UnixDatagram},
    time::Duration,
};

use crate::clock::monotonic_ns;

pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// From the environment systemd gives a service.
    pub fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            use std::os::{linux::net::SocketAddrExt, unix::ffi::OsStrExt};
            let bytes = path.as_bytes();
            // `@` names a socket in the abstract namespace.
            let addr = match bytes.strip_prefix(b"@") {
                Some(name) => SocketAddr::from_abstract_name(name).ok()?,
                None => SocketAddr::from_pathname(std::path::Path::new(&path)).ok()?,
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        Notifier { socket }
    }

    fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.socket
            && let Err(err) = socket.send_to_addr(message.as_bytes(), addr)
        {
            log::debug!("telling the service manager {message:?}: {err}");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}\nMAINPID={}", std::process::id()));
    }

    pub fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_ns() / 1000));
    }

    /// Ready again; `STATUS=` stays what the engine last said.
    pub fn reloaded(&self) {
        self.send("READY=1");
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
}

/// The engine's side: a ping at half the interval systemd asked for
/// (`$WATCHDOG_USEC`), sent from its loop, so only a loop that goes round
/// keeps the daemon alive.
pub struct Watchdog {
    notifier: Notifier,
    every: Option<Duration>,
    last: std::time::Instant,
    /// The last `STATUS=` sent from here.
    status: Option<String>,
}

impl Watchdog {
    pub fn from_env() -> Self {
        let usec = std::env::var("WATCHDOG_USEC").ok().and_then(|v| v.parse::<u64>().ok());
        // Meant for this process only (a child would inherit it).
        let ours = std::env::var("WATCHDOG_PID").ok().is_none_or(|pid| pid == std::process::id().to_string());
        let every = usec.filter(|_| ours).map(|usec| Duration::from_micros(usec / 2));
        Watchdog { notifier: Notifier::from_env(), every, last: std::time::Instant::now(), status: None }
    }

    /// How long the engine may wait before it must ping again.
    pub fn due_in(&self) -> Option<Duration> {
        self.every.map(|every| every.saturating_sub(self.last.elapsed()))
    }

    /// `STATUS=` for `systemctl status`, when it changed.
    pub fn status(&mut self, status: String) {
        if self.status.as_ref() != Some(&status) {
            self.notifier.send(&format!("STATUS={status}"));
            self.status = Some(status);
        }
    }

    pub fn ping(&mut self) {
        if self.every.is_some_and(|every| self.last.elapsed() >= every) {
            self.notifier.send("WATCHDOG=1");
            self.last = std::time::Instant::now();
        }
    }
}
