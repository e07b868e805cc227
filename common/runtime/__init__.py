"""The one stage loop (Runtime) and the per-stream bookkeeping every stage shares."""
