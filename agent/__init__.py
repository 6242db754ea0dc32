"""The active-learning loop, its decisions, the run store, the Ray runtime and the CLI."""
