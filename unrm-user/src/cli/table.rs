//! The tables of `unrm list` and `unrm scan`, for people and scripts alike.
//! On a terminal of known width a table is arranged to fit it: every
//! column keeps its content's width but the last (the path), which wraps
//! onto more lines: wrapped, never cut, so nothing is lost. Anywhere else
//! each column is as wide as its content, nothing wraps and nothing is
//! coloured: a layout that does not depend on who runs it.
//!
//! Every cell's text goes through `clean` on its way in ([`text`] is the
//! only way to make one), so no cell can carry a control character to the
//! terminal, whatever the table crate does with its content.

use comfy_table::{Attribute, Cell, CellAlignment, ColumnConstraint, ContentArrangement, Table, presets};

use super::{format::clean, hue::Hue, term::Term};

/// A column: its title, and whether its cells are right-aligned (numbers).
pub struct Column(pub &'static str, pub Align);

#[derive(Clone, Copy, PartialEq)]
pub enum Align {
    Left,
    Right,
}

/// A cell's text, escaped, and the colour it gets where colour is wanted.
pub struct Text {
    text: String,
    hue: Option<Hue>,
}

/// Text for a cell, from anywhere: escaped here. Whitespace at its end
/// (any, not only spaces), which the table's padding would hide and its
/// trimmed lines drop, is escaped too (`\u{20}`, `\u{3000}`), so a name
/// ending in it is told apart.
pub fn text(text: impl AsRef<str>) -> Text {
    let clean = clean(text.as_ref());
    let body = clean.trim_end_matches(char::is_whitespace);
    let hidden: String = clean[body.len()..].chars().map(|c| c.escape_unicode().to_string()).collect();
    Text { text: format!("{body}{hidden}"), hue: None }
}

impl Text {
    pub fn hue(self, hue: Hue) -> Text {
        Text { hue: Some(hue), ..self }
    }
}

pub struct Grid {
    table: Table,
    colour: bool,
}

impl Grid {
    /// A table with these columns, set up for `term`; the last column is
    /// the one that gives way on a narrow terminal.
    pub fn new(term: &Term, columns: &[Column]) -> Grid {
        let mut table = Table::new();
        // Whether this is a terminal, and how wide, is `term`'s to say.
        table.load_style(presets::NOTHING).force_no_tty();
        if term.colour {
            table.enforce_styling().style_text_only();
        }
        match term.width.filter(|_| term.tty) {
            Some(width) => table.set_width(width).set_content_arrangement(ContentArrangement::Dynamic),
            None => table.set_content_arrangement(ContentArrangement::Disabled),
        };
        let header = columns.iter().map(|Column(title, _)| {
            let cell = Cell::new(title);
            if term.colour { cell.add_attribute(Attribute::Bold) } else { cell }
        });
        table.set_header(header.collect::<Vec<_>>());
        let last = columns.len().saturating_sub(1);
        for (i, (column, Column(_, align))) in table.column_iter_mut().zip(columns).enumerate() {
            if *align == Align::Right {
                column.set_cell_alignment(CellAlignment::Right);
            }
            if i < last {
                column.set_padding((0, 2)).set_constraint(ColumnConstraint::ContentWidth);
            } else {
                // Wrapped by width alone: the crate's usual break at a
                // space would drop that space. A clean text holds no NUL.
                column.set_padding((0, 0)).set_delimiter('\0');
            }
        }
        Grid { table, colour: term.colour }
    }

    pub fn row(&mut self, cells: impl IntoIterator<Item = Text>) {
        let colour = self.colour;
        self.table.add_row(cells.into_iter().map(|Text { text, hue }| match hue {
            Some(hue) if colour => hue.cell(Cell::new(text)),
            _ => Cell::new(text),
        }));
    }

    /// The table's lines, without trailing blanks.
    pub fn render(&self) -> String {
        self.table.trim_fmt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(term: &Term) -> Grid {
        let mut grid = Grid::new(term, &[Column("ID", Align::Right), Column("PATH", Align::Left)]);
        grid.row([text("7").hue(Hue::Good), text("/short")]);
        grid.row([text("1234"), text(format!("/a/long/path/{}", "deep/".repeat(12)))]);
        grid.row([text("9"), text("/evil\x1b[31mname")]);
        grid.row([text("10"), text("/with  two spaces/and one at the end ")]);
        grid
    }

    /// A cell's lines from row `first` of a rendering, put back together.
    fn cell(out: &str, first: usize, skip: usize) -> String {
        let lines: Vec<&str> = out.lines().collect();
        let mut text = lines[first][skip..].to_string();
        for line in &lines[first + 1..] {
            match line.get(..skip) {
                Some(lead) if lead.trim().is_empty() => text.push_str(&line[skip..]),
                _ => break,
            }
        }
        text
    }

    #[test]
    fn plain_keeps_every_line_whole() {
        let out = grid(&Term::fixed(false, false, Some(30))).render();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 5, "{out}");
        assert_eq!(lines[0], "  ID  PATH");
        assert_eq!(lines[1], "   7  /short");
        assert!(lines[2].ends_with(&"deep/".repeat(12)), "{out}");
        assert_eq!(lines[3], "   9  /evil\\u{1b}[31mname");
        assert_eq!(lines[4], "  10  /with  two spaces/and one at the end\\u{20}");
        assert!(!out.contains('\x1b'));
    }

    #[test]
    fn a_terminal_wraps_the_last_column_to_its_width() {
        let out = grid(&Term::fixed(true, false, Some(30))).render();
        assert!(out.lines().all(|l| l.chars().count() <= 30), "{out}");
        assert!(out.lines().count() > 4, "{out}");
        assert_eq!(cell(&out, 2, 6), format!("/a/long/path/{}", "deep/".repeat(12)), "{out}");
        let last = out.lines().position(|l| l.starts_with("  10")).unwrap();
        assert_eq!(cell(&out, last, 6), "/with  two spaces/and one at the end\\u{20}", "{out}");
        assert!(!out.contains('\x1b'), "no colour asked for");
    }

    #[test]
    fn a_terminal_too_narrow_still_shows_everything() {
        let out = grid(&Term::fixed(true, false, Some(8))).render();
        assert!(out.replace(['\n', ' '], "").contains("/evil\\u{1b}[31mname"), "{out}");
    }

    #[test]
    fn colour_only_when_asked() {
        let out = grid(&Term::fixed(true, true, Some(80))).render();
        assert!(out.contains("\x1b["), "{out}");
        assert!(out.contains("/evil\\u{1b}[31mname"), "{out}");
    }
}
