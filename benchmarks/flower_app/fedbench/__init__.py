"""fedstream's round benchmark workload as a Flower app (run by benchmarks/flower_run.py)."""
