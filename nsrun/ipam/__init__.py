"""Address management: which address a sandbox gets, and the leases that record it."""
