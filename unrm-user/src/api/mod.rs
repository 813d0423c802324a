//! The daemon's socket API: length-prefixed JSON frames over a Unix socket;
//! a restore's content travels as a file descriptor (`SCM_RIGHTS`) beside
//! its frame, so the CLI, not the daemon, writes the restored file.

pub mod client;
pub mod proto;
pub mod server;
