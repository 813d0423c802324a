//! `unrm list --follow` (`unrm watch`): each new record and status change
//! as the daemon commits it, a line each; with `--json`, the event log's
//! own objects, one per line, for `jq`.
//!
//! The follow request goes first, the listing of what `--since` selects
//! after it: nothing committed in between is missed, and what both report
//! is printed once.

use std::{
    collections::HashMap,
    io::{self, Write},
    path::Path,
    time::SystemTime,
};

use anyhow::{Result, bail};

use super::{format::clean, hue::Hue, select, select::Filters, term::Term};
use crate::{
    api::{
        client::Client,
        proto::{Request, Response},
    },
    events::{Event, Kind, SCHEMA, host_name},
    record::{Record, Status},
};

/// Follows until the daemon hangs up or cuts this follower off (an error).
pub fn run(socket: &Path, filters: &Filters, json: bool) -> Result<()> {
    let mut client = Client::connect(socket)?;
    let request = Request::Follow {
        status: filters.status,
        path: filters.path.clone(),
        container: filters.container.clone(),
    };
    let Response::Following = client.call(&request)?.0 else { bail!("unexpected answer") };
    let term = Term::stdout();
    let mut out = Printer { json, term: &term, listed: HashMap::new() };
    if filters.since_ns.is_some() {
        let host = host_name();
        let mut records = select::list(socket, filters, 0)?;
        records.reverse();
        for record in records {
            out.listed.insert(record.id, record.status);
            let event = Event {
                schema: SCHEMA,
                event: Kind::Deleted,
                time: record.deleted_at,
                host: host.clone().into(),
                record: std::borrow::Cow::Owned(record),
            };
            out.print(&event)?;
        }
    }
    loop {
        let Response::Event { event } = client.next()? else { bail!("unexpected answer") };
        // A record the listing printed: its deletion, and its changes up to
        // the status the listing printed, are told already.
        if let Some(&listed) = out.listed.get(&event.record.id) {
            if event.event == Kind::Deleted {
                continue;
            }
            if event.record.status == listed {
                out.listed.remove(&event.record.id);
                continue;
            }
        }
        out.print(&event)?;
    }
}

struct Printer<'a> {
    json: bool,
    term: &'a Term,
    /// Records the listing printed, with the status it printed.
    listed: HashMap<i64, Status>,
}

impl Printer<'_> {
    fn print(&mut self, event: &Event) -> Result<()> {
        let line =
            if self.json { event.to_line() } else { self.text(event.event, event.time, &event.record) };
        let mut stdout = io::stdout().lock();
        // A closed pipe (`| head`) ends following quietly.
        if writeln!(stdout, "{line}").and_then(|()| stdout.flush()).is_err() {
            std::process::exit(0);
        }
        Ok(())
    }

    /// `TIME  EVENT  ID  STATUS  BY  PATH`, every field cleaned of control
    /// characters.
    fn text(&self, kind: Kind, time: SystemTime, r: &Record) -> String {
        let kind = match kind {
            Kind::Deleted => "deleted",
            Kind::Status => "now",
        };
        let status = r.status.as_str();
        let status = if self.term.colour { Hue::of(r.status).paint(status) } else { status.to_owned() };
        let by =
            r.deleted_by.as_ref().map(|d| format!("{}[{}]", d.comm, d.pid)).unwrap_or_else(|| "-".into());
        let reason = r.reason.as_ref().map(|why| format!(" ({})", clean(why))).unwrap_or_default();
        format!(
            "{}  {kind:<7}  {:>6}  {status:<8}  {}  {}{reason}",
            self.term.time(time),
            r.id,
            clean(&by),
            clean(&r.path)
        )
    }
}
