"""Agents trained with (learned) optimizers: A2C for the gridworlds."""
