//! `[events]`: where the daemon writes one line per deletion and status
//! change for log shippers (see `events::sink`).

use std::path::PathBuf;

use anyhow::{Result, bail};
use serde::Deserialize;

use super::{SizeValue, size_of_value};
use crate::events::sink::{Rotation, Sink};

/// The event file's default place, size and old files kept.
pub const DEFAULT_FILE: &str = "/var/log/unrm/events.jsonl";
const DEFAULT_MAX: u64 = 64 << 20;
const DEFAULT_KEEP: u32 = 5;

/// `[events]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsFile {
    to: Option<String>,
    file: Option<PathBuf>,
    max_size: Option<SizeValue>,
    keep: Option<u32>,
}

/// Where events go, from the section (the defaults without one).
pub(super) fn sink(section: Option<EventsFile>) -> Result<Sink> {
    let section = section.unwrap_or_default();
    let rotation = Rotation {
        path: section.file.unwrap_or_else(|| PathBuf::from(DEFAULT_FILE)),
        max_bytes: match section.max_size {
            Some(size) => size_of_value(size)?,
            None => DEFAULT_MAX,
        },
        keep: section.keep.unwrap_or(DEFAULT_KEEP),
    };
    if !rotation.path.is_absolute() {
        bail!("file: {:?} is not an absolute path", rotation.path);
    }
    if rotation.max_bytes < 4096 {
        bail!("max_size: at least 4K");
    }
    sink_named(section.to.as_deref().unwrap_or("file"), rotation)
}

/// `file`, `stdout`, `journal` or `off`.
pub fn sink_named(name: &str, rotation: Rotation) -> Result<Sink> {
    Ok(match name {
        "file" => Sink::File(rotation),
        "stdout" => Sink::Stdout,
        "journal" => Sink::Journal,
        "off" => Sink::Off,
        other => bail!("to: {other:?} is not one of file, stdout, journal, off"),
    })
}
