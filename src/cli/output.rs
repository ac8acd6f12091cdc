//! Rendering for people and for scripts.
//!
//! Human output is the default: tables, task output on stdout as it
//! arrives, states and notices on stderr, colour only on a terminal and
//! never with `NO_COLOR` set. `--json` prints the node's JSON unchanged:
//! one compact value for a command, one object per line for a stream.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use serde_json::Value;

use crate::cli::client::Event;

/// ANSI styles used by the client.
#[derive(Debug, Clone, Copy)]
pub enum Style {
    /// Headers.
    Bold,
    /// Secondary text.
    Dim,
    /// Failures.
    Red,
    /// Success.
    Green,
    /// Waiting, cancelled, warnings.
    Yellow,
    /// Identifiers.
    Cyan,
}

impl Style {
    fn code(self) -> &'static str {
        match self {
            Style::Bold => "1",
            Style::Dim => "2",
            Style::Red => "31",
            Style::Green => "32",
            Style::Yellow => "33",
            Style::Cyan => "36",
        }
    }
}

/// Where and how to print.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    /// `--json`.
    pub json: bool,
    /// Stdout is a terminal.
    pub out_tty: bool,
    /// Stderr is a terminal.
    pub err_tty: bool,
    /// Colour is allowed at all (`NO_COLOR` unset).
    colour: bool,
}

impl Out {
    /// Detect terminals and `NO_COLOR`.
    pub fn new(json: bool) -> Self {
        Out {
            json,
            out_tty: std::io::stdout().is_terminal(),
            err_tty: std::io::stderr().is_terminal(),
            colour: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    /// `text` styled for stdout.
    pub fn paint(&self, style: Style, text: &str) -> String {
        paint(self.colour && self.out_tty, style, text)
    }

    /// `text` styled for stderr.
    pub fn paint_err(&self, style: Style, text: &str) -> String {
        paint(self.colour && self.err_tty, style, text)
    }

    /// One compact JSON value on its own line.
    pub fn json_line(&self, v: &Value) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    }

    /// A table with a header row; columns padded to their widest cell.
    pub fn table(&self, headers: &[&str], rows: &[Vec<String>]) {
        let mut widths: Vec<usize> = headers.iter().map(|h| visible_len(h)).collect();
        for row in rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(visible_len(cell));
            }
        }
        let line = |cells: Vec<String>| {
            let n = cells.len();
            let mut s = String::new();
            for (i, (cell, w)) in cells.into_iter().zip(&widths).enumerate() {
                s.push_str(&cell);
                if i + 1 < n {
                    let pad = w.saturating_sub(visible_len(&cell)) + 2;
                    s.push_str(&" ".repeat(pad));
                }
            }
            s
        };
        let mut out = std::io::stdout().lock();
        let head = line(headers.iter().map(|h| h.to_string()).collect());
        let _ = writeln!(out, "{}", self.paint(Style::Bold, head.trim_end()));
        for row in rows {
            let _ = writeln!(out, "{}", line(row.clone()).trim_end());
        }
        if rows.is_empty() {
            let _ = writeln!(out, "{}", self.paint(Style::Dim, "(none)"));
        }
    }
}

/// Characters a terminal shows: ANSI colour sequences take no room.
fn visible_len(text: &str) -> usize {
    let mut n = 0;
    let mut in_escape = false;
    for c in text.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
}

fn paint(on: bool, style: Style, text: &str) -> String {
    if on {
        format!("\x1b[{}m{text}\x1b[0m", style.code())
    } else {
        text.to_owned()
    }
}

/// A string field of a JSON value, or "".
pub fn s(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A list field as `a, b, c`.
pub fn list(v: &Value, key: &str) -> String {
    v[key]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// An RFC 3339 timestamp shortened to `YYYY-MM-DD HH:MM:SS`.
pub fn short_time(t: &str) -> String {
    t.get(..19).unwrap_or(t).replace('T', " ")
}

const SPINNER: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

/// Prints one task's events as they arrive: output chunks to stdout, state
/// changes to stderr, and (on a terminal) a spinner line on stderr while
/// there is nothing else to show.
pub struct TaskPrinter {
    out: Out,
    /// Stdout ends with a newline (or nothing was written yet).
    at_line_start: bool,
    /// The spinner is on screen.
    spinner_shown: bool,
    frame: usize,
    state: String,
    since: Instant,
    /// Output arrived since the last state change.
    output_since_state: bool,
}

impl TaskPrinter {
    /// A printer for a task currently in `state`.
    pub fn new(out: Out, state: &str) -> Self {
        TaskPrinter {
            out,
            at_line_start: true,
            spinner_shown: false,
            frame: 0,
            state: state.to_owned(),
            since: Instant::now(),
            output_since_state: false,
        }
    }

    /// Render one event of the task. Returns the final state once terminal.
    pub fn event(&mut self, e: &Event) -> Option<String> {
        if self.out.json {
            self.out.json_line(&e.raw);
        } else if let Some(chunk) = e.chunk() {
            self.chunk(chunk);
        } else if let Some(state) = e.state() {
            self.state_line(state, e.message());
        }
        let state = e.state()?;
        self.state = state.to_owned();
        self.since = Instant::now();
        self.output_since_state = false;
        crate::cli::client::is_terminal(state).then(|| state.to_owned())
    }

    /// Write an output chunk to stdout.
    pub fn chunk(&mut self, chunk: &str) {
        if chunk.is_empty() {
            return;
        }
        self.clear_spinner();
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(chunk.as_bytes());
        let _ = out.flush();
        self.at_line_start = chunk.ends_with('\n');
        self.output_since_state = true;
    }

    /// A state change on stderr.
    pub fn state_line(&mut self, state: &str, message: Option<&str>) {
        let (mark, style) = match state {
            "completed" => ("✓", Style::Green),
            "failed" => ("✗", Style::Red),
            "cancelled" => ("⊘", Style::Yellow),
            "waiting" => ("⏸", Style::Yellow),
            _ => ("→", Style::Dim),
        };
        let mut text = format!("{mark} {state}");
        // Terminal and waiting states explain themselves; the routine ones
        // ("planning", "running") need no commentary.
        if let Some(m) = message.filter(|_| matches!(state, "failed" | "cancelled" | "waiting")) {
            text.push_str(": ");
            text.push_str(m);
        }
        let painted = self.out.paint_err(style, &text);
        self.notice(&painted);
    }

    /// A line on stderr that does not tear the output or the spinner.
    pub fn notice(&mut self, line: &str) {
        self.clear_spinner();
        self.end_output_line();
        eprintln!("{line}");
    }

    /// A secondary notice, dimmed on a terminal.
    pub fn dim_notice(&mut self, text: &str) {
        let line = self.out.paint_err(Style::Dim, text);
        self.notice(&line);
    }

    /// A dimmed hint for people; nothing with `--json`.
    pub fn hint(&mut self, text: &str) {
        if !self.out.json {
            self.dim_notice(text);
        }
    }

    /// If stdout is a terminal and the output stopped mid-line, end the line
    /// so that what comes next starts on its own.
    pub fn end_output_line(&mut self) {
        if !self.at_line_start && self.out.out_tty {
            println!();
            self.at_line_start = true;
        }
    }

    /// Whether a spinner is wanted now.
    pub fn wants_spinner(&self) -> bool {
        !self.out.json
            && self.out.err_tty
            && (self.at_line_start || !self.out.out_tty)
            && !self.output_since_state
            && !crate::cli::client::is_terminal(&self.state)
    }

    /// Draw the next spinner frame.
    pub fn tick(&mut self) {
        if !self.wants_spinner() {
            return;
        }
        self.frame = (self.frame + 1) % SPINNER.len();
        let secs = self.since.elapsed().as_secs();
        let text = format!("{} {}… {secs}s", SPINNER[self.frame], self.state);
        eprint!("\r\x1b[2K{}", self.out.paint_err(Style::Dim, &text));
        self.spinner_shown = true;
    }

    /// Remove the spinner line.
    pub fn clear_spinner(&mut self) {
        if self.spinner_shown {
            eprint!("\r\x1b[2K");
            self.spinner_shown = false;
        }
    }

    /// Tidy the terminal before exiting.
    pub fn finish(&mut self) {
        self.clear_spinner();
        self.end_output_line();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Helpers read fields leniently.
    #[test]
    fn fields() {
        let v = serde_json::json!({"a": "x", "n": 3, "l": ["p", "q"], "z": null});
        assert_eq!(s(&v, "a"), "x");
        assert_eq!(s(&v, "n"), "3");
        assert_eq!(s(&v, "z"), "");
        assert_eq!(list(&v, "l"), "p, q");
        assert_eq!(
            short_time("2026-01-02T03:04:05.123456Z"),
            "2026-01-02 03:04:05"
        );
    }
}
