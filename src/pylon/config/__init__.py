"""pylon's config: the Envoy v3 bootstrap subset (`envoy`), its loader, and errors with field paths."""

from pylon.config.errors import ConfigError
from pylon.config.loader import bootstrap_to_dict, load_bootstrap

__all__ = ["ConfigError", "bootstrap_to_dict", "load_bootstrap"]
