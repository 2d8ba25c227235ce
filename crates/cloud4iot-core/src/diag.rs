//! Diagnostics: a problem in a user's file, located precisely enough to fix without a
//! debugger (file, line, column, field path).

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// A parser's (1-based) position moved into `text`: libyaml puts the end of a text that
/// does not end in a line break on a line of its own past the last one, so an unclosed
/// `kind: [` in a one-line file would be reported at line 2. Such a position becomes the
/// end of the last line. Lines are counted as YAML counts them (CR LF, CR, LF, NEL, LS,
/// PS); found by fuzzing (fuzz/harness.rs checks every line named exists).
pub fn within_text(text: &str, line: usize, column: usize) -> (usize, usize) {
    let mut breaks = 0;
    let mut last_start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let width = match c {
            '\r' if chars.peek().is_some_and(|&(_, n)| n == '\n') => {
                chars.next();
                2
            }
            '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}' => c.len_utf8(),
            _ => continue,
        };
        breaks += 1;
        last_start = i + width;
    }
    if line <= breaks + 1 {
        (line, column)
    } else {
        (breaks + 1, text[last_start..].chars().count() + 1)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Diagnostic {
    /// Path as the user should see it (relative to the repository root where possible).
    pub file: PathBuf,
    /// 1-based; 0 when the problem concerns the whole file.
    pub line: usize,
    /// 1-based; 0 when unknown.
    pub column: usize,
    /// Dotted field path inside the object, e.g. `spec.instances.perDevice.deviceClass`;
    /// empty when the problem is not about one field.
    pub field: String,
    pub message: String,
}

impl Diagnostic {
    pub fn new(
        file: impl Into<PathBuf>,
        line: usize,
        column: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            file: file.into(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    /// `file:line:column: field: message`, the format editors and CI annotations parse.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
            if self.column > 0 {
                write!(f, ":{}", self.column)?;
            }
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

/// All the problems of one run, reported together (sorted by file and line).
#[derive(Clone, Debug, Default, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn sorted(mut self) -> Self {
        self.0.sort();
        self.0.dedup();
        self
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        write!(
            f,
            "{} error{}",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_line_field() {
        let d = Diagnostic::new(
            "functions/a.yaml",
            12,
            5,
            "spec.policy",
            "no PlacementPolicy named \"x\"",
        );
        assert_eq!(
            d.to_string(),
            "functions/a.yaml:12:5: spec.policy: no PlacementPolicy named \"x\""
        );
        let whole = Diagnostic::new("b.yaml", 0, 0, "", "not valid UTF-8");
        assert_eq!(whole.to_string(), "b.yaml: not valid UTF-8");
    }
}
