"""Where a model fails, in chemical terms: error metrics, statistics, chemical features, biased
splits, failure regions and the diagnosis that ties them together."""
