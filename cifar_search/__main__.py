"""``python -m cifar_search`` runs the CLI."""

from cifar_search.cli import entry_point

entry_point()
