//! What leaves the host: one event per new record and per status change,
//! as one compact JSON object, the same for `unrm list --follow --json` and
//! the event log that log shippers tail (`sink`). Only metadata: a deleted
//! file's content never leaves the machine.
//!
//! The schema is versioned (`schema`): a field is only ever added within a
//! version; renaming or removing one makes a new version.

pub mod sink;

use std::{borrow::Cow, time::SystemTime};

use serde::{Deserialize, Serialize};

use crate::{
    index::Change,
    record::{Record, rfc3339},
};

/// The version of the events' shape.
pub const SCHEMA: u32 = 1;

/// What happened to a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A deletion was recorded (its status says whether it is held).
    Deleted,
    /// A recorded deletion's status changed (held → captured, …).
    Status,
}

/// An event; borrowed where the daemon writes it (one per change, many
/// per second in a storm: nothing is copied that need not be), owned where
/// the CLI reads it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event<'a> {
    pub schema: u32,
    pub event: Kind,
    /// When the change was written to the index.
    #[serde(with = "rfc3339")]
    pub time: SystemTime,
    /// The machine it happened on, for whoever collects many.
    pub host: Cow<'a, str>,
    /// The record as it stood after this change.
    pub record: Cow<'a, Record>,
}

impl<'a> Event<'a> {
    /// The event for `change`: a new record as written, a status change
    /// with the record as the index has it now (`now`); either way its
    /// status and reason are the change's own (later changes of the same
    /// batch come as events of their own).
    pub fn of(change: &'a Change, now: Option<Record>, host: &'a str) -> Option<Event<'a>> {
        let record = match (&change.new, now) {
            (Some(new), _) => Cow::Borrowed(&**new),
            (None, Some(mut record)) => {
                record.status = change.status;
                record.reason.clone_from(&change.reason);
                Cow::Owned(record)
            }
            (None, None) => return None,
        };
        Some(Event {
            schema: SCHEMA,
            event: if change.new.is_some() { Kind::Deleted } else { Kind::Status },
            time: SystemTime::now(),
            host: Cow::Borrowed(host),
            record,
        })
    }

    /// One line of JSON, without its newline.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("events serialize")
    }
}

/// This machine's name, as events carry it.
pub fn host_name() -> String {
    let mut name = [0u8; 256];
    // SAFETY: gethostname(2) writes at most `len` bytes into the buffer.
    let ok = unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len() - 1) } == 0;
    let len = name.iter().position(|&b| b == 0).unwrap_or(0);
    if ok { String::from_utf8_lossy(&name[..len]).into_owned() } else { String::new() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Op, Status};

    #[test]
    fn an_event_is_one_line_with_its_schema_and_the_change_s_status() {
        let mut record = Record::new(b"/home/a/new\nline".to_vec(), Op::Unlink, Status::Held);
        record.id = 7;
        let change = Change { id: 7, new: None, status: Status::Captured, reason: None };
        let line = Event::of(&change, Some(record), "node-1").unwrap().to_line();
        assert!(!line.contains('\n'), "{line}");
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["schema"], SCHEMA);
        assert_eq!(value["event"], "status");
        assert_eq!(value["host"], "node-1");
        assert_eq!(value["record"]["id"], 7);
        assert_eq!(value["record"]["status"], "captured");
        assert_eq!(value["record"]["path"], "/home/a/new\nline");
        let back: Event = serde_json::from_str(&line).unwrap();
        assert_eq!(back.event, Kind::Status);
    }
}
