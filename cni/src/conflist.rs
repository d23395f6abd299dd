//! STUB (not committed)
use serde_json::Value;
use std::{path::Path, time::Duration};
#[derive(Debug)]
pub struct ConfError(pub String);
impl std::fmt::Display for ConfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
pub enum Splice {
    Unchanged,
    Write(Vec<u8>),
}
pub fn choose_primary(_n: &[String], _b: Option<&str>) -> Result<String, ConfError> {
    todo!()
}
pub fn splice(_p: &[u8], _e: &Value) -> Result<Splice, ConfError> {
    todo!()
}
pub fn unsplice(_p: &[u8]) -> Result<Option<Vec<u8>>, ConfError> {
    todo!()
}
pub fn check_own(_p: &[u8]) -> Result<(), ConfError> {
    todo!()
}
pub fn entry(_s: &Path, _w: Duration, _t: Duration) -> Value {
    todo!()
}
