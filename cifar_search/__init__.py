"""cifar-search: honest, durable Optuna searches for the prescribed CIFAR-10 CNN.

The Python API (:mod:`cifar_search.api`): :func:`search`, :func:`finalize`, :func:`report`,
:func:`results`, :func:`curves` and :func:`structures`, each documented with an example;
the ``cifar-search`` command is a thin layer over the same code.
"""

# The modules named like the API's functions are imported first: importing a submodule for
# the first time sets the package's attribute of its name, which would hide the function
# (so inside the package, import from those modules by their full name, never "from
# cifar_search import report").
from cifar_search import finalize as _finalize_module  # noqa: F401
from cifar_search import report as _report_module  # noqa: F401
from cifar_search import search as _search_module  # noqa: F401
from cifar_search.api import (
    Results,
    TrialRecord,
    curves,
    finalize,
    report,
    results,
    search,
    structures,
)
from cifar_search.errors import CifarSearchError
from cifar_search.ledger import TestEvaluation

__all__ = ["CifarSearchError", "Results", "TestEvaluation", "TrialRecord", "curves",
           "finalize", "report", "results", "search", "structures"]
