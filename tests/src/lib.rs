//! septa's end-to-end tests and the demo. The test bed itself lives in
//! `dataplane::testing` (re-exported here) so the agent's own e2e tests can use it too.

pub use dataplane::testing::{bed, scenario, traffic};
