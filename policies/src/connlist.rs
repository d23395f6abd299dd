//! Reachability: every allowed connection between workloads and external ranges.
