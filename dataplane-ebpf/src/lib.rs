#![no_std]
//! Empty on purpose: the programs are the `septa` binary (src/main.rs), built for the bpf
//! target by dataplane/build.rs. This library exists so that dataplane can name this crate as
//! a build-dependency and cargo rebuilds when it changes.
