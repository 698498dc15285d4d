"""imdb-sentiment: the built-in task."""
