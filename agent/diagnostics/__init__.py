"""Where a model fails, in chemical terms.

Statistics (``stats``); chemical features (``features``: the table in ``table``, the families
in ``families``, ``molecular`` and ``environment``, first shells in ``neighbours``); rules in
machine and readable form (``rules``); biased splits (``splits``); failure regions (``regions``
gathers them: the ``region`` type, the ``finders``, ``scoring``, ``folding`` and the
``search``); the one way to apply a diagnosis' regions to structures (``selector``); the
sampling check of provenance (``provenance``); the diagnosis that ties them together
(``diagnose``, its result in ``result``), its files (``storage``), the run-directory service
(``service``) and why a result is empty (``explain``). Every error figure comes from
:mod:`chemgap.common.metrics`; every path from :mod:`chemgap.agent.layout`.
"""

# the diagnosis's files in a run (or diagnose output) directory; the store reads them too
from chemgap.agent.layout import REGIONS_DIR, REGIONS_FILE

__all__ = ["REGIONS_DIR", "REGIONS_FILE"]
