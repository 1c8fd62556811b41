"""Trainers, their state, callbacks, checkpoints and control."""
