//! septa policy engine. Built out by the policy-engine issue; the data-path ABI it compiles to lives in `dataplane-common`.
