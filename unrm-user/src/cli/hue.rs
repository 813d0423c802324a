//! Colour for a record's status, the same in a table and on its own line:
//! green what can be restored, red what was lost, yellow what unrm let go
//! on purpose, dim a deletion nobody held (a record only). Only ever used
//! when `Term::colour` says so.

use comfy_table::{Attribute, Cell, Color};

use crate::record::Status;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Hue {
    Good,
    Bad,
    Warn,
    Quiet,
}

impl Hue {
    pub fn of(status: Status) -> Hue {
        match status {
            Status::Held | Status::Captured => Hue::Good,
            Status::Missed | Status::Failed => Hue::Bad,
            Status::Skipped | Status::Evicted => Hue::Warn,
            Status::Unheld => Hue::Quiet,
        }
    }

    /// A table cell in this colour.
    pub fn cell(self, cell: Cell) -> Cell {
        match self {
            Hue::Good => cell.fg(Color::DarkGreen),
            Hue::Bad => cell.fg(Color::DarkRed),
            Hue::Warn => cell.fg(Color::DarkYellow),
            Hue::Quiet => cell.add_attribute(Attribute::Dim),
        }
    }

    /// `text` (already clean) in this colour, for a line of its own.
    pub fn paint(self, text: &str) -> String {
        let sgr = match self {
            Hue::Good => "32",
            Hue::Bad => "31",
            Hue::Warn => "33",
            Hue::Quiet => "2",
        };
        format!("\x1b[{sgr}m{text}\x1b[0m")
    }
}
