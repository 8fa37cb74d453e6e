"""`python -m nsrun.helper`: the warm helper daemon (the `nsrun` command starts it on demand)."""

from nsrun.helper.server import serve
from nsrun.state.paths import StateDirs

serve(StateDirs())
