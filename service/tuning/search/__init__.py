"""The search: the weights' space, the samplers, pruning, warm starts, a trial's measures and pairing by seed."""
