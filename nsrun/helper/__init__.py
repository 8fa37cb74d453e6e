"""The warm helper: a root-only daemon, started on demand, that keeps nsrun's libraries loaded so
that the `nsrun` command can be a thin client (it sets sandboxes up; the client is their shim)."""
