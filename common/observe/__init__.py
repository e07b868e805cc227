"""What a stage tells its operator: counters (log line and Prometheus) and rate-limited logs."""
