"""The spec: the strict model of a study spec and the reading of its text."""
