"""The data phase: fetching from the Hub or the built-in world, reading, Great Expectations validation."""
