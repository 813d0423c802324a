//! Where log lines go. Under systemd the daemon's stderr is a journal
//! stream (`$JOURNAL_STREAM` names it), and lines are sent to journald
//! natively instead, as entries with fields an administrator can select on
//! (`journalctl -u unrm UNRM_RECORD=42`):
//!
//! - `UNRM_TIER` on every entry once the probes are loaded;
//! - `UNRM_RECORD`, `UNRM_PATH`, `UNRM_STATUS` (and others) on the entries
//!   about one record: the log statements carry them as key-values named
//!   `unrm_record`, `unrm_path`, `unrm_status` (journald keeps field names
//!   upper-case; the prefix keeps them clear of its own).
//!
//! On a terminal or a file, plain lines as before, the key-values not
//! repeated (the message already says them). `RUST_LOG` filters both. The
//! probes' own lines (aya-log) come through the same `log` facade.

use std::sync::OnceLock;

use log::{Log, Metadata, Record};
use systemd_journal_logger::JournalLog;

/// Installs the logger for this process: journald if stderr is the
/// journal, else plain lines on stderr.
pub fn init() {
    let filter = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .build();
    if systemd_journal_logger::connected_to_journal()
        && let Ok(journal) = JournalLog::new()
    {
        let identified = journal.with_syslog_identifier("unrm".into());
        log::set_max_level(filter.filter());
        let _ = JOURNAL.set(Journal { filter, journal: identified, tiered: OnceLock::new() });
        if let Some(logger) = JOURNAL.get() {
            let _ = log::set_logger(logger);
        }
        return;
    }
    log::set_max_level(filter.filter());
    let _ = log::set_boxed_logger(Box::new(filter));
}

/// From now on every journal entry names the probe tier.
pub fn set_tier(tier: &str) {
    if let Some(logger) = JOURNAL.get()
        && let Ok(journal) = JournalLog::new()
    {
        let tiered = journal.with_syslog_identifier("unrm".into()).add_extra_field("UNRM_TIER", tier);
        let _ = logger.tiered.set(tiered);
    }
}

static JOURNAL: OnceLock<Journal> = OnceLock::new();

struct Journal {
    /// RUST_LOG's filter (the env_logger it came with is not used to write).
    filter: env_logger::Logger,
    journal: JournalLog,
    /// The same, with the tier's field, once it is known.
    tiered: OnceLock<JournalLog>,
}

impl Log for Journal {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if self.filter.matches(record) {
            self.tiered.get().unwrap_or(&self.journal).log(record);
        }
    }

    fn flush(&self) {}
}
