"""Load benchmarks: wrk against the real service, reported as ratios from one run."""
