//! The config file's keys, documented once. The package's `/etc/unrm.toml`
//! (every key commented out at its default) and the `unrm.toml(5)` man page
//! are both written from this table, and the tests below parse the table
//! back through the policy: the documentation cannot name a key the daemon
//! refuses, nor a default it does not apply.

/// One key of the config file.
pub struct Key {
    /// `[section]` it lives in, if any.
    pub section: Option<&'static str>,
    pub name: &'static str,
    /// Its default as a TOML value; the commented-out line shows it.
    pub default: &'static str,
    /// What it does, in sentences.
    pub doc: &'static str,
}

pub const KEYS: &[Key] = &[
    Key {
        section: None,
        name: "max_file_size",
        default: "\"1G\"",
        doc: "Files larger than this are not copied when their last holder lets go; they stay restorable while held. A size: a number of bytes, or with K, M, G or T (binary multiples).",
    },
    Key {
        section: None,
        name: "max_store_size",
        default: "\"10G\"",
        doc: "All captures together never take more than this. To make room, the owner's own oldest captures go first, then the oldest of whoever is charged more than the owner.",
    },
    Key {
        section: None,
        name: "min_free",
        default: "\"10%\"",
        doc: "Free space the store's filesystem keeps (a percentage of its size, or a size): unrm never fills a disk someone is trying to free. A capture that would go below it is skipped, with the reason.",
    },
    Key {
        section: None,
        name: "store_reserve",
        default: "\"1%\"",
        doc: "Of the store's filesystem (a percentage or a size): captures kept even when something else fills the disk below min_free, so filling a disk cannot wipe every capture.",
    },
    Key {
        section: None,
        name: "keep_for",
        default: "\"30d\"",
        doc: "Records and captures older than this are forgotten (never a file still held). A duration: 12h, 7days, 30d.",
    },
    Key {
        section: None,
        name: "include",
        default: "[]",
        doc: "If not empty, only deleted files whose path matches one of these globs are recorded. A glob matches the whole path, and * also matches /.",
    },
    Key {
        section: None,
        name: "exclude",
        default: "[]",
        doc: "Deleted files whose path matches one of these globs are not recorded at all (unrm status counts them as ignored), e.g. [\"**/*.o\", \"/home/*/.cache/**\"].",
    },
    Key {
        section: None,
        name: "uids",
        default: "[]",
        doc: "If not empty, only files owned by these users are recorded (a file whose owner is unknown passes).",
    },
    Key {
        section: None,
        name: "scratch_files",
        default: "\"ignore\"",
        doc: "A file only ever held by the process that deleted it (the open-then-unlink idiom of scratch files): \"ignore\" records it and keeps it restorable while held, but does not copy it after; \"capture\" treats it like any other.",
    },
    Key {
        section: None,
        name: "visible_to",
        default: "\"owner\"",
        doc: "Who besides root may see, scan and restore a deleted file: \"owner\", its owner only; \"readers\", also whoever could read it by its path when it was deleted and, while it is held, can read it now.",
    },
    Key {
        section: None,
        name: "max_index_size",
        default: "\"1G\"",
        doc: "The index of records on disk. Past it, records without content are forgotten, the oldest of whoever deleted the most first.",
    },
    Key {
        section: None,
        name: "btf",
        default: "\"/sys/kernel/btf/vmlinux\"",
        doc: "Where the kernel's BTF (its structures' layout) is, for a kernel that keeps it elsewhere; --btf on the command line wins. Read at start only.",
    },
    Key {
        section: None,
        name: "metrics_textfile",
        default: "\"\"",
        doc: "A directory node_exporter's textfile collector reads (Debian's: \"/var/lib/prometheus/node-exporter\"): the daemon keeps unrm.prom there up to date, replacing it whole every few seconds. Empty: off. --metrics-textfile on the command line wins. Read at start only.",
    },
    Key {
        section: None,
        name: "metrics_listen",
        default: "\"\"",
        doc: "A loopback address and port (\"127.0.0.1:9465\", \"[::1]:9465\") to serve the metrics on, over HTTP at /metrics; other addresses are refused. Empty: off. The packaged unit has no network: see docs/service.md for the drop-in this needs. --metrics-listen wins. Read at start only.",
    },
    Key {
        section: None,
        name: "protect",
        default: "[]",
        doc: "Directories whose files unrm holds a reference to, so that deleting any of them (rm, rm -rf, find -delete, mv or an editor saving over one) is undoable even when no process had it open; see README, Protected trees. Each costs about one kernel file object per file. Files the exclude globs name are left out; trees on network, FUSE or removable filesystems are refused here (root may ask with unrm protect --any-fs).",
    },
    Key {
        section: None,
        name: "protect_max_files",
        default: "500000",
        doc: "Files protected at once, in all trees together; past it, new files are not protected, and unrm protect --list says how many and why.",
    },
    Key {
        section: None,
        name: "protect_max_tree_files",
        default: "200000",
        doc: "Files protected at once in one tree.",
    },
    Key {
        section: None,
        name: "versions",
        default: "10",
        doc: "Captured versions kept per path of a protected tree (each save over a file captures the version it replaced): past it, the oldest version is evicted.",
    },
    Key {
        section: None,
        name: "min_interval",
        default: "\"1m\"",
        doc: "A version of a protected file that lived less than this (written, then replaced within it) is kept only until a newer version is captured: an editor saving every few seconds leaves the last version and the long-lived ones, not hundreds of drafts. 0s keeps every version (within versions).",
    },
    Key {
        section: Some("events"),
        name: "to",
        default: "\"file\"",
        doc: "Where the daemon writes one JSON object per line for every deletion it records and every status change after (schema in README, Fleet): \"file\" (below), \"stdout\" (a container's log), \"journal\", or \"off\". Only metadata; never a file's content. Read at start only. The daemon's --events flag wins.",
    },
    Key {
        section: Some("events"),
        name: "file",
        default: "\"/var/log/unrm/events.jsonl\"",
        doc: "The event file, for a log shipper to tail: root's, mode 0640 (let another user read it with an ACL or the group); its directory must be one only root can change. The daemon's --events-file flag wins.",
    },
    Key {
        section: Some("events"),
        name: "max_size",
        default: "\"64M\"",
        doc: "Past this size the event file is renamed FILE.1 (FILE.1 becomes FILE.2, and so on) and a new one begun.",
    },
    Key {
        section: Some("events"),
        name: "keep",
        default: "5",
        doc: "Old event files kept (FILE.1 to FILE.keep); 0 keeps none. A writer that falls behind (a slow disk) drops events and counts them (unrm status, events_dropped) rather than slow the daemon.",
    },
    Key {
        section: Some("per_user"),
        name: "pins",
        default: "\"25%\"",
        doc: "For each user but root: how many of the daemon's pins (held deleted files) their files may take at once, as a share of the pin budget or a count.",
    },
    Key {
        section: Some("per_user"),
        name: "store",
        default: "\"25%\"",
        doc: "For each user but root: how much of max_store_size the captures of their files may take (a share or a size). Their own oldest captures are evicted to make room, never anyone else's.",
    },
    Key {
        section: Some("per_user"),
        name: "protected_files",
        default: "\"25%\"",
        doc: "For each user but root: how many files the trees they protect may hold, as a share of protect_max_files or a count.",
    },
    Key {
        section: Some("per_user"),
        name: "records_per_minute",
        default: "60000",
        doc: "For each user but root: records without content (unheld, missed, not pinned) kept per minute of their deletions.",
    },
];

/// The config file the package installs: every key commented out at its
/// default, with what it does above it.
pub fn commented_config() -> String {
    let mut out = String::from(
        "# unrm daemon configuration (see unrm.toml(5)).\n\
         # Every key is optional; the values shown are the defaults.\n\
         # Checked as a whole at start and on reload (systemctl reload unrm):\n\
         # a bad key or value is one error naming it, and a reload keeps the\n\
         # running policy.\n",
    );
    let mut section = None;
    for key in KEYS {
        if key.section != section {
            section = key.section;
            out += &format!("\n[{}]\n", section.unwrap_or_default());
        }
        out.push('\n');
        for line in wrap(key.doc, 76) {
            out += &format!("# {line}\n");
        }
        out += &format!("#{} = {}\n", key.name, key.default);
    }
    out
}

/// unrm.toml(5), in roff.
pub fn man_page(version: &str) -> String {
    let mut out = format!(
        ".TH UNRM.TOML 5 \"\" \"unrm {version}\" \"File Formats\"\n\
         .SH NAME\nunrm.toml \\- what the unrm daemon keeps, and how much\n\
         .SH SYNOPSIS\n/etc/unrm.toml\n\
         .SH DESCRIPTION\n\
         The unrm daemon reads its policy from this TOML file (another with \\fBunrm daemon \\-\\-config\\fR FILE). \
         Every key is optional; without the file the defaults below apply. \
         The file is checked as a whole at start, where a bad key or value is one error naming it and the daemon does not start, \
         and again on SIGHUP (\\fBsystemctl reload unrm\\fR), where a bad file is logged and the running policy stays.\n\
         .PP\nSizes are a number of bytes or a number with K, M, G or T (binary multiples), as a TOML string; \
         shares are a percentage (\"25%\") or an amount.\n\
         .SH KEYS\n"
    );
    let mut section = None;
    for key in KEYS {
        if key.section != section {
            section = key.section;
            out += &format!(".SS [{}]\n", section.unwrap_or_default());
        }
        out += &format!(".TP\n\\fB{}\\fR = {}\n{}\n", key.name, roff(key.default), roff(key.doc));
    }
    out += ".SH FILES\n.TP\n/etc/unrm.toml\nthe policy (a conffile of the package)\n.TP\n/var/lib/unrm\nthe index and the captured files\n";
    out += ".SH SEE ALSO\n\\fBunrm\\fR(1), \\fBunrm\\-daemon\\fR(1)\n";
    out
}

/// Text safe inside a roff paragraph: backslashes escaped, no line that
/// starts with a control character.
fn roff(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    if text.starts_with(['.', '\'']) { format!("\\&{text}") } else { text }
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("never empty");
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(word.to_owned());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    /// The commented config with every key switched on at its default.
    fn uncommented() -> String {
        commented_config()
            .lines()
            .filter(|l| !l.starts_with("# ") && *l != "#")
            .map(|l| l.strip_prefix('#').unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn every_documented_key_parses_to_the_default_it_claims() {
        let text = uncommented();
        assert_eq!(text.matches(" = ").count(), KEYS.len(), "{text}");
        let parsed = Policy::parse(&text).unwrap_or_else(|e| panic!("{e:#}\n{text}"));
        let d = Policy::default();
        assert_eq!((parsed.max_file_size, parsed.max_store_size), (d.max_file_size, d.max_store_size));
        assert_eq!((parsed.min_free, parsed.store_reserve), (d.min_free, d.store_reserve));
        assert_eq!((parsed.keep_for, parsed.max_index_size), (d.keep_for, d.max_index_size));
        assert_eq!(
            (parsed.scratch, parsed.visible_to, parsed.per_user),
            (d.scratch, d.visible_to, d.per_user)
        );
        assert!(parsed.uids.is_none() && parsed.include.is_none() && parsed.exclude.is_empty());
        assert!(parsed.metrics_textfile.is_none() && parsed.metrics_listen.is_none(), "empty is off");
        assert!(parsed.wants(std::path::Path::new("/home/a/f"), Some(1000)), "empty lists filter nothing");
    }

    #[test]
    fn the_man_page_names_every_key() {
        let page = man_page("0.0.0");
        for key in KEYS {
            assert!(page.contains(&format!("\\fB{}\\fR", key.name.replace('-', "\\-"))), "{}", key.name);
        }
        assert!(page.lines().all(|l| !l.starts_with('\'')));
    }
}
