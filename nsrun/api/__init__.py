"""The public Python API: `nsrun.Sandbox` and `nsrun.Network` (re-exported by `nsrun`)."""
