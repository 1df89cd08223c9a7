"""The real system flow the platform tests drive end to end, with overrides that keep it fast."""
FLOW = "scratch"
FAST_OVERRIDES = ["n=3"]
METRIC = "total"
