"""One sandbox's life, orchestrated: the request checked, the host side set up, the shim started,
everything undone at the end; and `exec` into a running one."""
