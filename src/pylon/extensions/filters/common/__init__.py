"""What several filters share, by Envoy's layout (`extensions/filters/common/`): the RBAC config and engine."""
