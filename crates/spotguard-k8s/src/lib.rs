//! Spot Guard adapter for Kubernetes (work in progress).
