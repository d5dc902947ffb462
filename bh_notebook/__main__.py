"""``python -m bh_notebook``: the command line (see ``bh_notebook.cli``)."""

from .cli import main

main(prog_name="bh-notebook")
