"""Where a model fails, in chemical terms.

Statistics (``stats``), chemical features (``features``, first shells in ``neighbours``),
rules in machine and readable form (``rules``), biased splits (``splits``), failure regions
(``regions``), the sampling check of provenance (``provenance``) and the diagnosis that ties
them together (``diagnose``); every error figure comes from :mod:`chemgap.common.metrics`.
"""

# the diagnosis's files in a run (or diagnose output) directory; the store reads them too
REGIONS_FILE = "regions.json"
REGIONS_DIR = "regions"
