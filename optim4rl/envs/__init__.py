"""Environments: the gridworlds of Appendix B."""
from optim4rl.envs.gridworld import (NUM_ACTIONS, WORLD_NAMES, State, StepInfo,
                                     World, make, observe, reset, step)
