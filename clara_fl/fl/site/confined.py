"""Entry point of a job's confined process at a site (``python -m clara_fl.fl.site.confined``).

Confinement must come before any thread exists: importing numpy starts OpenBLAS's threads, which
Landlock would leave unconfined. So this module imports nothing but the confinement layer until the
process is confined; then :func:`clara_fl.fl.site.site_process.serve` takes over.
"""

from __future__ import annotations

import sys


def main() -> None:
    from clara_fl.runtime.confinement import confine_child_from_argv

    report, rest = confine_child_from_argv(sys.argv[1:])
    from clara_fl.fl.site.site_process import serve

    serve(rest, report.describe())


if __name__ == "__main__":
    main()
