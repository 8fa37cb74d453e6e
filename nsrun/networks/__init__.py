"""Named networks: one bridge, one subnet (the address pool), one set of firewall rules each."""
