"""NAT and filtering per network: pure rule sets, and the backends that install them."""
