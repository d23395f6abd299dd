//! septa's typed contract, shared by every process and free of the kernel toolchain (no aya,
//! no tokio): the agent socket protocol and the flow record schema.

#![forbid(unsafe_code)]

pub mod flow;
pub mod protocol;
