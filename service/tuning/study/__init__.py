"""The running study: admission, the loop, the service's queue, a worker's inner run, the race and its statistics."""
