"""Evaluation and studies: optimizer specs, comparisons over seeds, metrics, reports, the
agent-gradient study and kernel throughput."""
