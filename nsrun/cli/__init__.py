"""The command line: a fast entry point (`entry`) and the typer application (`app`)."""
