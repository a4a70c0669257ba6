"""Environments: the gridworlds of Appendix B."""
from optim4rl.envs.gridworld import (NUM_ACTIONS, PAPER_SIX, WORLD_NAMES, State, StepInfo,
                                     World, make, observe, paper_reward_scale, reset, step)
