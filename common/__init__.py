"""The vocabulary every chemgap package shares and that imports nothing of chemgap itself.

- :mod:`chemgap.common.keys`: where labels and predictions live on ``ase.Atoms``;
- :mod:`chemgap.common.metrics`: every error metric chemgap reports, each defined once;
- :mod:`chemgap.common.tasks`: how work fans out (an executor the caller hands down; in-process
  by default, Ray when the agent supplies it).
"""
