//! Who hears of each change once it is committed: the clients following
//! the index (`unrm list --follow`) and the event log.
//!
//! A follower sees exactly what a listing would show it, as it happens:
//! the same filters, the same visibility check (records it may not see do
//! not exist for it). Each has a bounded queue; one that does not keep up
//! is told so and cut off rather than let the daemon's memory grow.

use std::sync::Arc;

use anyhow::Result;
use globset::GlobMatcher;
use tokio::sync::mpsc;

use super::{
    Engine,
    answer::{may_see, path_glob},
};
use crate::{
    access::Caller,
    api::{
        proto::Response,
        server::{Followed, Reply},
    },
    events::{Event, sink::EventLog},
    record::{Record, Status},
};

/// Events queued for one follower at most.
const FOLLOW_QUEUE: usize = 4096;
/// Followers one user other than root may have at once: each one's filter
/// runs on every event of the machine.
const FOLLOWERS_PER_USER: usize = 4;
/// The longest path glob a follower may give: a glob runs on every event,
/// and a long one with many wildcards costs the engine per path byte.
pub const MAX_GLOB: usize = 1024;

/// A listing's filters, applied to each change.
pub struct Filter {
    pub status: Option<Status>,
    pub path: Option<GlobMatcher>,
    /// The start of a container's id, or a runtime's name.
    pub container: Option<String>,
}

impl Filter {
    pub fn new(status: Option<Status>, path: Option<String>, container: Option<String>) -> Result<Self> {
        if path.as_ref().is_some_and(|glob| glob.len() > MAX_GLOB) {
            anyhow::bail!("a --path glob to follow is at most {MAX_GLOB} bytes");
        }
        Ok(Filter { status, path: path_glob(path)?, container })
    }

    /// The cheap tests: status and container.
    fn admits(&self, r: &Record) -> bool {
        self.status.is_none_or(|s| s == r.status)
            && self.container.as_deref().is_none_or(|c| r.in_container(c))
    }

    /// The glob, tested last (after the access check too).
    fn path_matches(&self, r: &Record) -> bool {
        self.path.as_ref().is_none_or(|glob| glob.is_match(&r.path))
    }
}

struct Follower {
    caller: Caller,
    filter: Filter,
    tx: mpsc::Sender<Followed>,
}

/// Where changes go.
pub struct Feed {
    followers: Vec<Follower>,
    pub log: EventLog,
    /// This machine's name, as events carry it.
    host: String,
    /// Followers cut off for falling behind.
    pub dropped: u64,
}

impl Feed {
    pub fn new(log: EventLog, host: String) -> Self {
        Feed { followers: Vec::new(), log, host, dropped: 0 }
    }
}

impl Engine {
    /// Takes a follower on: its events come after this answer.
    pub(super) fn follow(&mut self, filter: Filter, caller: &Caller) -> Reply {
        self.feed.followers.retain(|f| !f.tx.is_closed());
        let mine = self.feed.followers.iter().filter(|f| f.caller.uid == caller.uid).count();
        if !caller.is_root() && mine >= FOLLOWERS_PER_USER {
            return Reply::error(format!("at most {FOLLOWERS_PER_USER} followers per user; stop one first"));
        }
        let (tx, rx) = mpsc::channel(FOLLOW_QUEUE);
        self.feed.followers.push(Follower { caller: caller.clone(), filter, tx });
        let mut reply = Reply::new(Response::Following);
        reply.stream = Some(rx);
        reply
    }

    /// Sends what the last commit made durable to whoever listens.
    pub(super) fn publish(&mut self) {
        let changes = self.index.take_changes();
        let feed = &mut self.feed;
        feed.followers.retain(|f| !f.tx.is_closed());
        if changes.is_empty() || (feed.followers.is_empty() && !feed.log.is_on()) {
            return;
        }
        let visibility = self.cfg.policy.visible_to;
        let mut stale = Vec::new();
        for change in &changes {
            let now = match &change.new {
                Some(_) => None,
                None => self.index.get(change.id).unwrap_or_else(|err| {
                    log::warn!("reading record {} for its event: {err:#}", change.id);
                    None
                }),
            };
            // None: forgotten since (expired, pruned), nothing to tell.
            let Some(event) = Event::of(change, now, &feed.host) else { continue };
            let line: Arc<str> = event.to_line().into();
            feed.log.send(line.clone());
            let mut behind = 0;
            feed.followers.retain(|f| {
                let wanted = f.filter.admits(&event.record)
                    && may_see(&self.pins, visibility, &f.caller, &event.record, &mut stale)
                    && f.filter.path_matches(&event.record);
                !wanted || offer(&f.tx, &line, &mut behind)
            });
            feed.dropped += behind;
        }
        self.reread_acls(stale);
    }
}

/// Queues one event for a follower; false when it is gone, or so far
/// behind that it is told so and cut off (counted in `behind`).
fn offer(tx: &mpsc::Sender<Followed>, line: &Arc<str>, behind: &mut u64) -> bool {
    if tx.capacity() <= 1 {
        let _ = tx.try_send(Followed::Behind(FOLLOW_QUEUE));
        *behind += 1;
        return false;
    }
    tx.try_send(Followed::Event(line.clone())).is_ok()
}
