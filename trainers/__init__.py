"""The inner problem: tasks and the PPO run that learns from per-token rewards."""
