"""unifer-conformance: the suite every unifer backend must pass (see README.md).

Entry points: ``unifer conformance --backend NAME`` (``unifer_conformance.cli``), the pytest plugin
(``pytest --pyargs unifer_conformance --unifer-backend NAME``) and :func:`unifer_conformance.suite.run_suite`.
This module imports nothing heavy, so that ``unifer``'s CLI and pytest can load the plugin cheaply.
"""

__version__ = "0.1.0"
# Version of the JSON report's layout (docs in README.md). Bump the major when a field changes meaning or goes.
REPORT_SCHEMA_VERSION = "1.0"
