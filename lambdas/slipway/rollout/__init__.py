"""Rollouts: batch planning, the deploy lock, health decisions and the state machine's tasks."""
