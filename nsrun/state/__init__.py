"""nsrun's state on disk: where it lives, how it is written and locked, and how it is read back.

Everything under /run/nsrun and /var/lib/nsrun is root's alone (directories 0700, files 0600,
whatever the umask), written with O_NOFOLLOW and O_EXCL + rename, and validated field by field
when read back: nothing found there is acted on before it has been checked.
"""
