//! septa controller: Kubernetes watches, learning from flows, recommendations. Built out by later issues.
