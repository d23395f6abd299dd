//! septa's end-to-end test bed: pods as network namespaces, real sockets, the real data path.

pub mod bed;
pub mod scenario;
pub mod traffic;
