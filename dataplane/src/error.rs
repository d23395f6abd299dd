//! Errors of the data-plane library, each naming what failed and where.

use std::path::PathBuf;

/// A data-plane operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the eBPF object is empty: the agent was built with AYA_BUILD_SKIP; rebuild without it"
    )]
    NoObject,
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program `{name}`: {source}")]
    Program {
        name: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("the eBPF object has no {kind} named `{name}`")]
    Missing { kind: &'static str, name: String },
    #[error("map `{name}`: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("interface `{iface}`: {reason}")]
    Interface { iface: String, reason: String },
    #[error("bpffs pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pinned map {path} {what}; it was pinned by another configuration or septa version: start with the same settings, or remove the pins (septa-agent --remove-enforcement) to recreate them")]
    PinnedMismatch { path: PathBuf, what: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A map held something this build cannot have written (or a system query failed).
    #[error("unexpected state: {0}")]
    Corrupt(String),
    /// A setting could not be put into effect (the message names it).
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// A short, bounded label for metrics (`septa_errors_total{kind=...}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::NoObject => "no_object",
            Error::Config(_) => "config",
            Error::Load(_) => "load",
            Error::Program { .. } => "program",
            Error::Missing { .. } => "missing",
            Error::Map { .. } => "map",
            Error::Interface { .. } => "interface",
            Error::PinDir { .. } => "pin_dir",
            Error::Netns { .. } => "netns",
            Error::PinnedMismatch { .. } => "pinned_mismatch",
            Error::Io(_) => "io",
            Error::Corrupt(_) => "corrupt",
        }
    }
}

impl From<hostnet::Error> for Error {
    fn from(e: hostnet::Error) -> Self {
        match e {
            hostnet::Error::Netns { path, source } => Error::Netns { path, source },
            hostnet::Error::Interface { iface, reason } => Error::Interface { iface, reason },
        }
    }
}

/// Map a map error to [`Error::Map`] with the map's name.
pub fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> Error {
    move |source| Error::Map { name, source }
}
