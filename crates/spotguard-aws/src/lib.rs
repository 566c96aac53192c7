//! Spot Guard adapter for AWS (work in progress).
