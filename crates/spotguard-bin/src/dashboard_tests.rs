//! The Grafana dashboard (`deploy/grafana/spotguard.json`) against the metrics the daemon registers.
