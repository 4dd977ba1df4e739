"""Custom cluster types by Envoy's name (`envoy.clusters.*`), each registering its config and cluster factory."""
