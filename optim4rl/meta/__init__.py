"""Meta-training learned optimizers: the outer loop, pipeline training, and the task plug-ins
(A2C on gridworlds, PPO on Brax)."""
