"""Links, addresses and routes: the pure naming plan and the netlink adapter that carries it out."""
