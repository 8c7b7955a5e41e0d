"""opencann command line."""
