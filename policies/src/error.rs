//! Errors that name where the problem is: file, object, field.

use std::fmt;

/// One problem with one input object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file (and document index within it), or `<input>`.
    pub file: String,
    /// `Kind namespace/name`, or `document N` when the object has no identity yet.
    pub object: String,
    /// The field path, e.g. `spec.ingress[0].ports[1].endPort`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.object)?;
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found while loading; loading goes on past bad objects where that is safe.
/// `.0` are errors (the input is wrong: the object is left out), `.1` warnings (the input is
/// valid but something in it has no effect, e.g. another product's policy kind).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>, pub Vec<Diagnostic>);

impl Diagnostics {
    /// No errors (warnings aside).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The warnings.
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.1
    }
    /// Record a warning.
    pub fn warn(&mut self, file: &str, object: &str, field: &str, message: impl Into<String>) {
        self.1.push(Diagnostic {
            file: file.to_owned(),
            object: object.to_owned(),
            field: field.to_owned(),
            message: message.into(),
        });
    }
    pub fn push(&mut self, file: &str, object: &str, field: &str, message: impl Into<String>) {
        self.0.push(Diagnostic {
            file: file.to_owned(),
            object: object.to_owned(),
            field: field.to_owned(),
            message: message.into(),
        });
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        for d in &self.1 {
            writeln!(f, "warning: {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// A field-level error while converting one object (the caller adds file and object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}
