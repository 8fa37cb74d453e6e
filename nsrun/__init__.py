"""nsrun: run one command in its own network namespace, on a bridge, with NAT to the outside."""

__version__ = "0.1.0"
