//! Human output: aligned tables, statuses coloured only when stdout is a terminal.

use std::io::IsTerminal;

use serde_json::Value;

/// A table of text cells printed with aligned columns.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<Cell>>,
}

/// One cell: its text, and whether it is a status (coloured on a terminal).
pub struct Cell {
    text: String,
    status: bool,
}

impl Cell {
    /// A plain cell.
    pub fn plain(text: impl Into<String>) -> Self {
        Cell {
            text: text.into(),
            status: false,
        }
    }

    /// A status cell.
    pub fn status(text: impl Into<String>) -> Self {
        Cell {
            text: text.into(),
            status: true,
        }
    }
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: Vec<&'static str>) -> Self {
        Table {
            header,
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    /// The table as text, colours when `colour`; no trailing spaces.
    pub fn render(&self, colour: bool) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.text.chars().count());
                }
            }
        }
        let mut out = String::new();
        let header: Vec<Cell> = self.header.iter().map(|h| Cell::plain(*h)).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let pad = widths.get(i).copied().unwrap_or(0);
                let last = i + 1 == row.len();
                let text = if cell.status && colour {
                    paint(&cell.text)
                } else {
                    cell.text.clone()
                };
                line.push_str(&text);
                if !last {
                    let fill = pad.saturating_sub(cell.text.chars().count()) + 2;
                    line.push_str(&" ".repeat(fill));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints it to stdout.
    pub fn print(&self) {
        print!("{}", self.render(colour()));
    }
}

/// Whether stdout is a terminal (and `NO_COLOR` is not set): then statuses are coloured.
pub fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// A status in its ANSI colour.
pub fn paint(status: &str) -> String {
    let code = match status {
        "completed" | "done" | "compensated" => "32",
        "running" | "executing" => "36",
        "compensating" | "compensating_step" => "33",
        "paused" => "35",
        "failed" | "error" => "31",
        _ => return status.to_string(),
    };
    format!("\x1b[{code}m{status}\x1b[0m")
}

/// A JSON value as a cell's text: strings bare, null as `-`, others as JSON.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An RFC 3339 time shortened to the second (`2024-05-01 12:00:03`).
pub fn time(v: &Value) -> String {
    match v.as_str() {
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .map(|t| {
                t.with_timezone(&chrono::Utc)
                    .format("%Y-%m-%d %H:%M:%SZ")
                    .to_string()
            })
            .unwrap_or_else(|_| t.to_string()),
        None => text(v),
    }
}

/// Pretty JSON on stdout.
pub fn print_json(v: &Value) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(_) => println!("{v}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_and_colours_do_not_count_in_the_width() {
        let mut t = Table::new(vec!["ID", "STATUS", "STEP"]);
        t.row(vec![
            Cell::plain("a"),
            Cell::status("running"),
            Cell::plain("s1"),
        ]);
        t.row(vec![
            Cell::plain("bbbb"),
            Cell::status("failed"),
            Cell::plain("-"),
        ]);
        assert_eq!(
            t.render(false),
            "ID    STATUS   STEP\na     running  s1\nbbbb  failed   -\n"
        );
        let coloured = t.render(true);
        assert!(
            coloured.contains("\x1b[36mrunning\x1b[0m  s1"),
            "{coloured}"
        );
        assert!(coloured.contains("\x1b[31mfailed\x1b[0m   -"), "{coloured}");
    }

    #[test]
    fn times_are_shown_to_the_second() {
        assert_eq!(
            time(&Value::from("2024-05-01T12:00:03.123456Z")),
            "2024-05-01 12:00:03Z"
        );
        assert_eq!(time(&Value::Null), "-");
    }
}
