"""`python -m droptune.client.cli`: the droptune command line."""

from droptune.client.cli.main import main

main()
