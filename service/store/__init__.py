"""The service's own tables, beside Optuna's in the same database, and how to open both."""
