"""The read side: what the API, the dashboard and the CLI show of studies.

`model` reads a study from its store into `schemas`' response shapes (one read model for
every reader); `verdicts` puts the tuning's statistics into words. Nothing here writes a
study, and the tuning never imports this room (import-linter holds both).
"""
