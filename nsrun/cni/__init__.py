"""nsrun's networks as a CNI plugin (`nsrun-cni`): the protocol (`spec`), the actions (`plugin`)
and the thin executable that engines run (`entry`)."""
