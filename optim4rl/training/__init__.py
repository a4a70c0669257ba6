"""Training agents with any optax optimizer: the chunked loop, A2C on gridworlds, PPO on Brax,
return curves and resumable checkpoints."""
