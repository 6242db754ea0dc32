"""Where a model fails, in chemical terms.

Statistics, chemical features, biased splits, failure regions and the diagnosis that ties them
together; every error figure comes from :mod:`chemgap.common.metrics`.
"""

# the diagnosis's files in a run (or diagnose output) directory; the store reads them too
REGIONS_FILE = "regions.json"
REGIONS_DIR = "regions"
