"""``torchrun`` for a site's DDP round, bound to the process that started it.

``python -m clara_fl.fl.site.torchrun --parent-pid PID [torchrun arguments]`` asks the kernel to kill this
process when its parent dies, checks that the parent is still ``PID`` (it may have died before the request
took effect), then runs ``torch.distributed.run``. The binding is made here, in the child, rather than by a
``preexec_fn`` in the parent: Python's documentation warns that a ``preexec_fn`` can deadlock when the
parent has threads, and the process that starts a round (FLARE's job process, or the site's confined
process) has several.
"""

from __future__ import annotations

import argparse
import os
import sys

from clara_fl.fl.site.worker import die_with_parent

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parent-pid", type=int, required=True, help="the process this one must not outlive")
    args, torchrun_args = parser.parse_known_args(argv)
    die_with_parent()
    if os.getppid() != args.parent_pid:
        raise SystemExit("clara-fl torchrun: the process that started this round is gone")
    from torch.distributed.run import main as torchrun_main

    sys.argv = ["torchrun", *torchrun_args]
    torchrun_main(torchrun_args)


if __name__ == "__main__":
    main()
