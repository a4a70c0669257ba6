"""Evaluation and studies, above training and meta-training (nothing below imports them):
optimizer specs (specs), trainers per environment (trainers), comparisons over seeds
(compare), metrics, reports, the agent-gradient study (gradients) and kernel throughput."""
