//! unrm's integration tests, one binary (`cargo xtask test` runs it as
//! root, one test at a time: one daemon per machine). Each module is one
//! area, and says in its own header what it proves:
//!
//! - `capture`: the capture loop: held, captured, restored, on ext4 and tmpfs.
//! - `tiers`, `fs_tier`: what must not depend on the probe tier; the fs tier.
//! - `policy`: what is kept, and the bounds that keep a disk from filling.
//! - `protect`: protected trees: files nobody held, deleted every way users
//!   delete them, restored; new files, excludes, limits, unmounting, users.
//! - `faults`: crashes, a full store, garbage on the socket.
//! - `cli`: the CLI on its own, its bad input, its output on a terminal and piped.
//! - `containers`: which container deleted a file (real podman).
//! - `events`: what leaves the host: following, the event log and a real shipper.
//! - `users`, `aim`, `abuse`, `fairness`, `stuck`: the Security section of
//!   README, one test per attack: reading, aiming a restore, stopping
//!   unrm, unfair use of the store, a filesystem that stops answering.
//! - `deploy`: the Kubernetes DaemonSet (deploy/): its manifest against the
//!   service unit, and its image run by podman in the manifest's shape.
//! - `metrics`: the metrics as node_exporter, promtool and an OpenMetrics
//!   parser read them.
//! - `layout`: the source's own rules (layers, function length, names).
//!
//! What they run against (the daemon, holders, mounts, accounts) is in
//! `unrm-tests` (`tests/src/lib.rs`).

mod abuse;
mod aim;
mod capture;
mod cli;
mod containers;
mod deploy;
mod events;
mod fairness;
mod faults;
mod fs_tier;
mod layout;
mod metrics;
mod policy;
mod protect;
mod service;
mod stuck;
mod tiers;
mod users;
