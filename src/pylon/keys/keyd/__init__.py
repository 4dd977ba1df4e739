"""`pylon keyd`: a separate process that alone holds private keys and signs for proxies."""
