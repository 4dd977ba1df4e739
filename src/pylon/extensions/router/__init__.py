"""Router extensions by category: `cluster_specifiers/` pick a route's cluster per request."""
