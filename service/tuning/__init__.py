"""The outer problem: a noise-aware Optuna study over shaping weights, run crash-safely."""
