"""Benchmarks of the platform's training code (run with ``make bench``; results go to ``benchmarks/results/``)."""
