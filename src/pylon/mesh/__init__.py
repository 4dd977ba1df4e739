"""`pylon mesh`: the whole mesh on one machine, network namespaces as pods (issue 15)."""
