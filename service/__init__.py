"""The outer problem and everything a user touches: CLI, tuning, store, API."""
