"""What several extensions share, by Envoy's layout (`extensions/common/`): the dynamic forward proxy's DNS cache."""
