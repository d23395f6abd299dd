//! The pure core of CNI configuration management: which file of the configuration directory
//! the runtime uses, septa's entry in it, and the check of a conflist a user provides. The
//! agent does the I/O: reading the directory, watching it, writing through a temp file
//! ([`temp_name`]) and a rename, and deciding when to write.
//!
//! Edits work on the file's text, not on a re-serialised document: every byte outside septa's
//! entry stays as the primary CNI wrote it, so [`unsplice`] of [`splice`] gives back the
//! original file byte for byte, whatever its formatting. A file that fails any check here is
//! never edited; the error names what is wrong with it.

use std::{fmt, ops::Range, path::Path, time::Duration};

use serde_json::{Map, Value};

use crate::{
    jsontext::{self, Elements},
    plugin,
};

/// The `type` of septa's plugin entry: the binary the runtime runs.
pub const SEPTA_TYPE: &str = "septa-cni";
/// The extensions libcni's `ConfFiles` reads from the configuration directory.
pub const CONF_EXTENSIONS: [&str; 3] = [".conf", ".conflist", ".json"];
/// septa's temp files in the configuration directory end with this: an extension no runtime
/// reads, after a leading dot that hides them from listings.
pub const TEMP_SUFFIX: &str = ".septa-tmp";

/// The temp file to write before renaming it over `target` (a file name, not a path): in the
/// same directory, so the rename is atomic, and never read by a runtime.
pub fn temp_name(target: &str) -> String {
    format!(".{target}{TEMP_SUFFIX}")
}

/// Whether `name` is one of septa's temp files (left behind by a crash, for the agent to remove).
pub fn is_temp(name: &str) -> bool {
    name.len() > 1 + TEMP_SUFFIX.len() && name.starts_with('.') && name.ends_with(TEMP_SUFFIX)
}

/// Whether a runtime reads the file `name`: libcni keeps names whose extension (from the last
/// dot, as Go's `filepath.Ext`, case-sensitive) is one of [`CONF_EXTENSIONS`]. Hidden files are
/// not skipped, because libcni does not skip them: a `.x.conf` is loaded, and sorts first.
pub fn is_conf_file(name: &str) -> bool {
    !name.contains('/')
        && !is_temp(name)
        && name
            .rfind('.')
            .is_some_and(|dot| CONF_EXTENSIONS.contains(&&name[dot..]))
}

/// The primary network's file among the directory entries `names`: `by_name` if given (an
/// error if it is absent or not a name a runtime reads), else what containerd and CRI-O load,
/// the configuration files sorted by byte order, first wins.
pub fn choose_primary(names: &[String], by_name: Option<&str>) -> Result<String, ConfError> {
    if let Some(want) = by_name {
        if !is_conf_file(want) {
            return Err(ConfError::NotAConfName {
                name: want.to_owned(),
            });
        }
        return names.iter().find(|n| *n == want).cloned().ok_or_else(|| {
            ConfError::PrimaryMissing {
                name: want.to_owned(),
            }
        });
    }
    names
        .iter()
        .filter(|n| is_conf_file(n))
        .min()
        .cloned()
        .ok_or(ConfError::NoConfFiles)
}

/// septa's plugin object: the keys [`crate::plugin::NetConf`] reads. Durations are rounded up
/// to whole seconds. JSON cannot carry a path that is not UTF-8: such a path is written with
/// replacement characters, names no socket, and septa-cni then fails closed (code 11), so the
/// agent should refuse one in its configuration.
pub fn entry(socket: &Path, socket_wait: Duration, timeout: Duration) -> Value {
    let secs = |d: Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
    serde_json::json!({
        "type": SEPTA_TYPE,
        "agentSocket": socket.to_string_lossy(),
        "socketWaitSeconds": secs(socket_wait),
        "timeoutSeconds": secs(timeout),
    })
}

/// What [`splice`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Splice {
    /// septa's entry is already there, once, last, and equal to the wanted one: nothing to write.
    Unchanged,
    /// The file's new content.
    Write(Vec<u8>),
}

/// Put `entry` (from [`entry`]) into the conflist `primary` as its last plugin, so it sees the
/// previous plugins' result. septa entries already present are removed first (another socket,
/// other options, not last, or several of them); when the one entry is already what is wanted,
/// the answer is [`Splice::Unchanged`]. The inserted text follows the style of the plugin
/// before it: the same separator, indentation and line ending, or one line if that plugin is
/// on one line.
pub fn splice(primary: &[u8], entry: &Value) -> Result<Splice, ConfError> {
    let wanted = entry.as_object().ok_or(ConfError::NotSeptaEntry)?;
    if wanted.get("type").and_then(Value::as_str) != Some(SEPTA_TYPE) {
        return Err(ConfError::NotSeptaEntry);
    }
    plugin::check_keys(wanted).map_err(|e| ConfError::BadSeptaEntry { msg: e.msg })?;
    let doc = Doc::parse(primary, true)?;
    let septa = doc.septa_indices();
    if septa == [doc.plugins.len() - 1] && doc.plugins[septa[0]] == *entry {
        return Ok(Splice::Unchanged);
    }
    let base = if septa.is_empty() {
        primary.to_vec()
    } else {
        doc.without(&septa)?
    };
    let base_doc = Doc::parse(&base, true)?;
    let out = base_doc.append(wanted);
    // The text surgery is checked before anything is written: the result parses, ends with
    // exactly the wanted entry after the untouched plugins, and removing it gives `base` back.
    let check = Doc::parse(&out, true).map_err(|_| ConfError::Internal)?;
    let n = base_doc.plugins.len();
    if check.plugins.len() != n + 1
        || check.plugins[..n] != base_doc.plugins[..]
        || check.plugins[n] != *entry
        || check.without(&[n])? != base
    {
        return Err(ConfError::Internal);
    }
    Ok(Splice::Write(out))
}

/// The conflist without septa's entries, `None` when it has none. The inverse of [`splice`]
/// byte for byte. The version is not checked, so that an uninstall can always clean up.
pub fn unsplice(file: &[u8]) -> Result<Option<Vec<u8>>, ConfError> {
    let doc = Doc::parse(file, false)?;
    let septa = doc.septa_indices();
    if septa.is_empty() {
        return Ok(None);
    }
    doc.without(&septa).map(Some)
}

/// Whether `file` is a conflist with a septa entry (false for anything malformed).
pub fn contains_septa(file: &[u8]) -> bool {
    Doc::parse(file, false).is_ok_and(|d| !d.septa_indices().is_empty())
}

/// Check a complete conflist a user provides (own-file mode): valid, with `name` and a
/// supported `cniVersion`, plugins before septa's, and exactly one septa entry, last (so it
/// sees the previous plugins' result), whose keys septa-cni accepts.
pub fn check_own(conflist: &[u8]) -> Result<(), ConfError> {
    let doc = Doc::parse(conflist, true)?;
    match doc.top.get("name") {
        Some(Value::String(s)) if !s.is_empty() => {}
        _ => return Err(ConfError::NoName),
    }
    let septa = doc.septa_indices();
    let last = doc.plugins.len() - 1;
    match septa[..] {
        [] => Err(ConfError::NoSeptaEntry),
        [i] if i != last => Err(ConfError::SeptaNotLast {
            index: i,
            plugins: doc.plugins.len(),
        }),
        [_] if last == 0 => Err(ConfError::SeptaAlone),
        [i] => plugin::check_keys(doc.plugins[i].as_object().ok_or(ConfError::Internal)?)
            .map_err(|e| ConfError::BadSeptaEntry { msg: e.msg }),
        _ => Err(ConfError::SeveralSeptaEntries { indices: septa }),
    }
}

/// What is wrong with a configuration file or a request about one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfError {
    /// Not JSON; where serde_json stopped.
    NotJson {
        line: usize,
        column: usize,
        msg: String,
    },
    /// JSON, but not an object.
    NotObject,
    /// A key septa reads appears twice: runtimes take the last, a reader may take another.
    DuplicateKey { key: String },
    /// A single plugin's configuration (a `.conf`): there is no list to append to.
    SinglePlugin,
    /// An object without `plugins`.
    NoPlugins,
    /// `plugins` is not an array.
    PluginsNotArray,
    /// `plugins` is empty.
    EmptyPlugins,
    /// `plugins[index]` is not an object.
    PluginNotObject { index: usize },
    /// `plugins[index]` has no string `type`.
    PluginWithoutType { index: usize },
    /// `plugins[index]` spells `type` more than one way (`type`, `Type`).
    AmbiguousType { index: usize },
    /// No `cniVersion`.
    NoCniVersion,
    /// `cniVersion` is not a string.
    CniVersionNotString,
    /// `cniVersions` is not a list of `major.minor.patch` strings.
    CniVersionsMalformed,
    /// `cniVersion` (or the highest of `cniVersions`) is one septa-cni does not speak: every
    /// pod ADD would fail.
    UnsupportedVersion { version: String },
    /// Own file: no string `name`.
    NoName,
    /// Own file: no septa entry.
    NoSeptaEntry,
    /// Own file: septa's entry is not last.
    SeptaNotLast { index: usize, plugins: usize },
    /// Own file: septa-cni is the only plugin.
    SeptaAlone,
    /// Own file: more than one septa entry.
    SeveralSeptaEntries { indices: Vec<usize> },
    /// septa's entry has keys septa-cni refuses.
    BadSeptaEntry { msg: String },
    /// Removing septa would leave no plugin: this is an own file, not a spliced one.
    OnlySepta,
    /// The entry to splice is not a `septa-cni` plugin object.
    NotSeptaEntry,
    /// No `.conf`, `.conflist` or `.json` file in the directory.
    NoConfFiles,
    /// The named primary is not in the directory.
    PrimaryMissing { name: String },
    /// The named primary has a name no runtime reads.
    NotAConfName { name: String },
    /// The text scanner disagreed with serde_json: nothing is written.
    Internal,
}

impl fmt::Display for ConfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ConfError::*;
        match self {
            NotJson { line, column, msg } => {
                write!(f, "not JSON at line {line}, column {column}: {msg}")
            }
            NotObject => write!(f, "not a JSON object"),
            DuplicateKey { key } => write!(
                f,
                "the top-level key {key:?} appears more than once; runtimes use the last, so \
                 septa will not guess which one to edit"
            ),
            SinglePlugin => write!(
                f,
                "a single plugin's configuration (no \"plugins\" list): septa splices itself \
                 only into .conflist files; convert it to a conflist or use own-file mode"
            ),
            NoPlugins => write!(f, "no \"plugins\" list: not a CNI conflist"),
            PluginsNotArray => write!(f, "\"plugins\" is not an array"),
            EmptyPlugins => write!(f, "\"plugins\" is empty: there is no primary CNI plugin"),
            PluginNotObject { index } => write!(f, "plugins[{index}] is not an object"),
            PluginWithoutType { index } => write!(f, "plugins[{index}] has no string \"type\""),
            AmbiguousType { index } => write!(
                f,
                "plugins[{index}] spells \"type\" more than one way; Go runtimes match keys \
                 case-insensitively, so which plugin runs is unclear"
            ),
            NoCniVersion => write!(f, "no \"cniVersion\""),
            CniVersionNotString => write!(f, "\"cniVersion\" is not a string"),
            CniVersionsMalformed => write!(
                f,
                "\"cniVersions\" is not a list of version strings like \"1.0.0\""
            ),
            UnsupportedVersion { version } => write!(
                f,
                "cniVersion {version:?} is not one septa-cni speaks ({}): every pod's ADD \
                 would fail",
                plugin::SUPPORTED.join(", ")
            ),
            NoName => write!(f, "no \"name\": a conflist needs a non-empty string name"),
            NoSeptaEntry => write!(f, "no {SEPTA_TYPE:?} plugin"),
            SeptaNotLast { index, plugins } => write!(
                f,
                "the {SEPTA_TYPE} plugin is plugins[{index}] of {plugins}; it must be last, to \
                 see the previous plugins' result"
            ),
            SeptaAlone => write!(
                f,
                "{SEPTA_TYPE} is the only plugin; it is chained and must follow the plugin \
                 that makes the pod's veth"
            ),
            SeveralSeptaEntries { indices } => {
                write!(
                    f,
                    "{SEPTA_TYPE} appears more than once, at plugins{indices:?}"
                )
            }
            BadSeptaEntry { msg } => write!(f, "septa's entry: {msg}"),
            OnlySepta => write!(
                f,
                "{SEPTA_TYPE} is the only plugin: this is an own file, not a primary with \
                 septa spliced in; remove the file instead"
            ),
            NotSeptaEntry => write!(f, "the entry is not a {SEPTA_TYPE:?} plugin object"),
            NoConfFiles => write!(
                f,
                "no {} file in the CNI configuration directory: the primary CNI has not \
                 written its configuration yet",
                CONF_EXTENSIONS.join(", ")
            ),
            PrimaryMissing { name } => {
                write!(f, "{name} is not in the CNI configuration directory")
            }
            NotAConfName { name } => write!(
                f,
                "{name:?} is not a name runtimes read (a file name ending in {})",
                CONF_EXTENSIONS.join(", ")
            ),
            Internal => write!(
                f,
                "internal error: the file's text and its JSON disagree; it was not changed"
            ),
        }
    }
}

impl std::error::Error for ConfError {}

/// Spec 1.1 runtimes run a conflist at the highest of its `cniVersions` that they speak, not
/// at `cniVersion`; the highest listed is the one septa-cni may be given.
fn check_versions_list(list: Option<&Value>) -> Result<(), ConfError> {
    let Some(list) = list else { return Ok(()) };
    let parse = |v: &Value| -> Option<(u64, u64, u64, String)> {
        let s = v.as_str()?;
        let mut parts = s.split('.').map(|p| p.parse::<u64>().ok());
        let (a, b, c) = (parts.next()??, parts.next()??, parts.next()??);
        parts.next().is_none().then(|| (a, b, c, s.to_owned()))
    };
    let versions = list
        .as_array()
        .and_then(|a| a.iter().map(parse).collect::<Option<Vec<_>>>())
        .ok_or(ConfError::CniVersionsMalformed)?;
    match versions.into_iter().max() {
        Some((.., highest)) if !plugin::SUPPORTED.contains(&highest.as_str()) => {
            Err(ConfError::UnsupportedVersion { version: highest })
        }
        _ => Ok(()),
    }
}

/// A validated conflist and where its plugins are in the text.
struct Doc<'a> {
    text: &'a [u8],
    top: Map<String, Value>,
    plugins: Vec<Value>,
    layout: Elements,
}

impl<'a> Doc<'a> {
    fn parse(text: &'a [u8], check_version: bool) -> Result<Self, ConfError> {
        let value: Value = serde_json::from_slice(text).map_err(|e| {
            let full = e.to_string();
            let place = format!(" at line {} column {}", e.line(), e.column());
            ConfError::NotJson {
                line: e.line(),
                column: e.column(),
                msg: full.strip_suffix(&place).unwrap_or(&full).to_owned(),
            }
        })?;
        let Value::Object(mut top) = value else {
            return Err(ConfError::NotObject);
        };
        let members = jsontext::members(text).ok_or(ConfError::Internal)?;
        for key in ["plugins", "cniVersion", "name"] {
            if members.iter().filter(|m| m.key == key).count() > 1 {
                return Err(ConfError::DuplicateKey { key: key.into() });
            }
        }
        let plugins = match top.remove("plugins") {
            None if top.contains_key("type") => return Err(ConfError::SinglePlugin),
            None => return Err(ConfError::NoPlugins),
            Some(Value::Array(a)) => a,
            Some(_) => return Err(ConfError::PluginsNotArray),
        };
        if plugins.is_empty() {
            return Err(ConfError::EmptyPlugins);
        }
        for (index, p) in plugins.iter().enumerate() {
            let p = p.as_object().ok_or(ConfError::PluginNotObject { index })?;
            if !p.get("type").is_some_and(Value::is_string) {
                return Err(ConfError::PluginWithoutType { index });
            }
            // Go runtimes decode a plugin's `type` case-insensitively, the last spelling
            // winning: `"TYPE": "septa-cni"` after `"type"` would be what they run.
            if p.keys().filter(|k| k.eq_ignore_ascii_case("type")).count() > 1 {
                return Err(ConfError::AmbiguousType { index });
            }
        }
        match top.get("cniVersion") {
            None => return Err(ConfError::NoCniVersion),
            Some(Value::String(v)) => {
                if check_version && !plugin::SUPPORTED.contains(&v.as_str()) {
                    return Err(ConfError::UnsupportedVersion { version: v.clone() });
                }
            }
            Some(_) => return Err(ConfError::CniVersionNotString),
        }
        if check_version {
            check_versions_list(top.get("cniVersions"))?;
        }
        let span = members
            .iter()
            .find(|m| m.key == "plugins")
            .ok_or(ConfError::Internal)?
            .value
            .clone();
        let layout = jsontext::elements(text, span).ok_or(ConfError::Internal)?;
        if layout.items.len() != plugins.len() {
            return Err(ConfError::Internal);
        }
        Ok(Doc {
            text,
            top,
            plugins,
            layout,
        })
    }

    fn septa_indices(&self) -> Vec<usize> {
        (0..self.plugins.len())
            .filter(|&i| self.plugins[i].get("type").and_then(Value::as_str) == Some(SEPTA_TYPE))
            .collect()
    }

    /// The text without the plugins at `remove` (ascending). An element after a kept one goes
    /// with the separator before it (so removing an appended entry restores the file exactly);
    /// leading ones go with the separator after them.
    fn without(&self, remove: &[usize]) -> Result<Vec<u8>, ConfError> {
        let items = &self.layout.items;
        let first_kept = (0..items.len())
            .find(|i| !remove.contains(i))
            .ok_or(ConfError::OnlySepta)?;
        let mut cuts: Vec<Range<usize>> = Vec::new();
        if first_kept > 0 {
            cuts.push(items[0].start..items[first_kept].start);
        }
        cuts.extend(
            remove
                .iter()
                .filter(|&&i| i > first_kept)
                .map(|&i| items[i - 1].end..items[i].end),
        );
        let mut out = Vec::with_capacity(self.text.len());
        let mut at = 0;
        for c in cuts {
            out.extend_from_slice(self.text.get(at..c.start).ok_or(ConfError::Internal)?);
            at = c.end;
        }
        out.extend_from_slice(self.text.get(at..).ok_or(ConfError::Internal)?);
        Ok(out)
    }

    /// The text with `entry` after the last plugin, in that plugin's style.
    fn append(&self, entry: &Map<String, Value>) -> Vec<u8> {
        let items = &self.layout.items;
        let last = &items[items.len() - 1];
        let style = Style::of(&self.text[last.clone()]);
        let mut insert = match items.len() {
            // No separator to copy: the space after `[`, or one space if the plugin is
            // written with spaces and the bracket is not.
            1 => {
                let after_open = &self.text[self.layout.open + 1..last.start];
                let mut sep = b",".to_vec();
                if after_open.is_empty() && style.spaced && style.lines.is_none() {
                    sep.push(b' ');
                }
                sep.extend_from_slice(after_open);
                sep
            }
            n => self.text[items[n - 2].end..last.start].to_vec(),
        };
        style.write_object(entry, 0, &mut insert);
        let mut out = Vec::with_capacity(self.text.len() + insert.len());
        out.extend_from_slice(&self.text[..last.end]);
        out.extend_from_slice(&insert);
        out.extend_from_slice(&self.text[last.end..]);
        out
    }
}

/// How the plugin before septa's is written, to write septa's entry alike.
struct Style {
    /// `None`: on one line.
    lines: Option<Lines>,
    /// A space after `:` and `,` on one line.
    spaced: bool,
}

struct Lines {
    newline: &'static str,
    /// The indentation of the element's closing brace.
    base: String,
    /// One more level.
    unit: String,
}

impl Style {
    fn of(element: &[u8]) -> Style {
        let spaced = element.windows(2).any(|w| w == b": " || w == b", ");
        let Some(first_nl) = element.iter().position(|&b| b == b'\n') else {
            return Style {
                lines: None,
                spaced,
            };
        };
        let newline = if first_nl > 0 && element[first_nl - 1] == b'\r' {
            "\r\n"
        } else {
            "\n"
        };
        let indent_at = |from: usize| -> String {
            element[from..]
                .iter()
                .take_while(|&&b| b == b' ' || b == b'\t')
                .map(|&b| b as char)
                .collect()
        };
        let inner = indent_at(first_nl + 1);
        let last_nl = element
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap_or(first_nl);
        let base = indent_at(last_nl + 1);
        let unit = match inner.strip_prefix(&base) {
            Some(u) if !u.is_empty() => u.to_owned(),
            _ => "  ".to_owned(),
        };
        Style {
            lines: Some(Lines {
                newline,
                base,
                unit,
            }),
            spaced,
        }
    }

    fn write_value(&self, v: &Value, depth: usize, out: &mut Vec<u8>) {
        match v {
            Value::Object(m) => self.write_object(m, depth, out),
            Value::Array(a) if !a.is_empty() => {
                out.push(b'[');
                for (i, x) in a.iter().enumerate() {
                    self.separate(i == 0, depth + 1, out);
                    self.write_value(x, depth + 1, out);
                }
                self.close(depth, out);
                out.push(b']');
            }
            // Scalars and empty containers: serde_json's spelling and escapes.
            other => out.extend_from_slice(other.to_string().as_bytes()),
        }
    }

    /// `type` first, as every CNI plugin object is written; then the rest in map order.
    fn write_object(&self, m: &Map<String, Value>, depth: usize, out: &mut Vec<u8>) {
        if m.is_empty() {
            out.extend_from_slice(b"{}");
            return;
        }
        out.push(b'{');
        let ordered = m
            .get_key_value("type")
            .into_iter()
            .chain(m.iter().filter(|(k, _)| *k != "type"));
        for (i, (k, v)) in ordered.enumerate() {
            self.separate(i == 0, depth + 1, out);
            out.extend_from_slice(Value::String(k.clone()).to_string().as_bytes());
            out.extend_from_slice(if self.spaced || self.lines.is_some() {
                b": "
            } else {
                b":"
            });
            self.write_value(v, depth + 1, out);
        }
        self.close(depth, out);
        out.push(b'}');
    }

    fn separate(&self, first: bool, depth: usize, out: &mut Vec<u8>) {
        if !first {
            out.push(b',');
        }
        match &self.lines {
            Some(l) => self.newline_at(l, depth, out),
            None if self.spaced && !first => out.push(b' '),
            None => {}
        }
    }

    fn close(&self, depth: usize, out: &mut Vec<u8>) {
        if let Some(l) = &self.lines {
            self.newline_at(l, depth, out);
        }
    }

    fn newline_at(&self, l: &Lines, depth: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(l.newline.as_bytes());
        out.extend_from_slice(l.base.as_bytes());
        for _ in 0..depth {
            out.extend_from_slice(l.unit.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e() -> Value {
        entry(
            Path::new("/run/septa/septa.sock"),
            Duration::from_secs(30),
            Duration::from_secs(10),
        )
    }

    fn written(s: Splice) -> String {
        match s {
            Splice::Write(b) => String::from_utf8(b).unwrap(),
            Splice::Unchanged => panic!("unchanged"),
        }
    }

    #[test]
    fn the_entry_follows_the_previous_plugins_style() {
        let pretty = "{\n  \"cniVersion\": \"1.0.0\",\n  \"name\": \"n\",\n  \"plugins\": [\n    {\n      \"type\": \"bridge\"\n    }\n  ]\n}\n";
        assert_eq!(
            written(splice(pretty.as_bytes(), &e()).unwrap()),
            "{\n  \"cniVersion\": \"1.0.0\",\n  \"name\": \"n\",\n  \"plugins\": [\n    {\n      \"type\": \"bridge\"\n    },\n    {\n      \"type\": \"septa-cni\",\n      \"agentSocket\": \"/run/septa/septa.sock\",\n      \"socketWaitSeconds\": 30,\n      \"timeoutSeconds\": 10\n    }\n  ]\n}\n"
        );
        let compact = r#"{"cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#;
        assert_eq!(
            written(splice(compact.as_bytes(), &e()).unwrap()),
            r#"{"cniVersion":"1.0.0","plugins":[{"type":"bridge"},{"type":"septa-cni","agentSocket":"/run/septa/septa.sock","socketWaitSeconds":30,"timeoutSeconds":10}]}"#
        );
        let one_line = "{\"cniVersion\": \"1.0.0\", \"plugins\": [\n\t{\"type\": \"a\"},\n\t{\"type\": \"b\", \"x\": [1]}\r\n]}";
        assert_eq!(
            written(splice(one_line.as_bytes(), &e()).unwrap()),
            "{\"cniVersion\": \"1.0.0\", \"plugins\": [\n\t{\"type\": \"a\"},\n\t{\"type\": \"b\", \"x\": [1]},\n\t{\"type\": \"septa-cni\", \"agentSocket\": \"/run/septa/septa.sock\", \"socketWaitSeconds\": 30, \"timeoutSeconds\": 10}\r\n]}"
        );
        let crlf_tabs = "{\r\n\t\"cniVersion\": \"1.0.0\",\r\n\t\"plugins\": [\r\n\t\t{\r\n\t\t\t\"type\": \"ptp\"\r\n\t\t}\r\n\t]\r\n}";
        let out = written(splice(crlf_tabs.as_bytes(), &e()).unwrap());
        assert!(
            out.contains(
                "\t\t},\r\n\t\t{\r\n\t\t\t\"type\": \"septa-cni\",\r\n\t\t\t\"agentSocket\""
            ),
            "{out}"
        );
        assert!(
            out.ends_with("\"timeoutSeconds\": 10\r\n\t\t}\r\n\t]\r\n}"),
            "{out}"
        );
    }

    #[test]
    fn nested_values_in_the_entry_are_written_in_style() {
        let mut x = e();
        x["args"] = serde_json::json!({"cni": {"labels": {}}, "list": [1, {"a": []}], "e": []});
        let pretty = "{\n \"cniVersion\": \"1.0.0\",\n \"plugins\": [\n  {\n   \"type\": \"bridge\"\n  }\n ]\n}";
        let out = written(splice(pretty.as_bytes(), &x).unwrap());
        let back: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back["plugins"][1], x);
        assert!(
            out.contains("\n    \"list\": [\n     1,\n     {\n      \"a\": []\n     }\n    ]"),
            "{out}"
        );
        assert_eq!(
            unsplice(out.as_bytes()).unwrap().unwrap(),
            pretty.as_bytes()
        );
    }

    #[test]
    fn temp_names_are_hidden_and_never_read_by_a_runtime() {
        let t = temp_name("10-flannel.conflist");
        assert_eq!(t, ".10-flannel.conflist.septa-tmp");
        assert!(is_temp(&t) && !is_conf_file(&t));
        assert!(!is_temp(".septa-tmp") && !is_temp("x.septa-tmp"));
        assert!(
            is_conf_file(".hidden.conf"),
            "libcni reads hidden files too"
        );
        for no in ["x.CONF", "x.conflist.bak", "x", "a/b.conf", "x.conf~", ""] {
            assert!(!is_conf_file(no), "{no}");
        }
        let x = entry(
            Path::new(std::ffi::OsStr::from_bytes(b"/run/\xff.sock")),
            Duration::from_millis(1500),
            Duration::from_millis(1),
        );
        assert_eq!(x["agentSocket"], "/run/\u{fffd}.sock");
        assert_eq!(
            (
                x["socketWaitSeconds"].as_u64(),
                x["timeoutSeconds"].as_u64()
            ),
            (Some(2), Some(1))
        );
    }

    use std::os::unix::ffi::OsStrExt;
}
