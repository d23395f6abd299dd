//! septa's end-to-end tests and the demo. The test bed itself is the `testbed` crate
//! (re-exported here) so the agent's own e2e tests can use it too.

pub use testbed::{bed, scenario, traffic};
