"""Cluster specifier plugins (route `inline_cluster_specifier_plugin`, `cluster_specifier_plugins`)."""
