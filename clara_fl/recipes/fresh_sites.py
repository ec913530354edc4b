"""What the sites an execution environment makes afresh need before they can run a clara-fl recipe's job.

FLARE's default class allow-list lacks clara-fl's components. A simulation workspace gets clara-fl's allow-list; a
PocEnv's freshly provisioned sites get the job as BYOC (an ``app/custom/`` folder holding only a note, which the POC
admin may submit). A ProdEnv's sites were set up by their own staff (``clara-fl site setup``) and get nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from nvflare.recipe.spec import ExecEnv, Recipe

__all__ = ["POC_CUSTOM_NOTE", "allow_clara_classes"]

POC_CUSTOM_NOTE = """This folder holds no code. It makes the job BYOC, so the freshly provisioned POC sites of a
PocEnv (whose class allow-list is FLARE's default, without clara-fl's classes) build its components.
Real sites allow clara-fl's classes through `clara-fl site setup` and need no such folder.
"""


def allow_clara_classes(recipe: Recipe, env: ExecEnv, staging: Path, to_server: bool = True) -> None:
    """Let ``env``'s fresh sites build ``recipe``'s clara-fl components; a second call for the same job adds nothing.

    Args:
        recipe: the recipe whose job goes to ``env`` (its ``name`` names the simulator's job folder).
        env: the execution environment: SimEnv and PocEnv are prepared, any other is left as it is.
        staging: the recipe's staging folder, where the POC note is written once.
        to_server: the server's app gets the note too (its app holds clara-fl components).
    """
    from nvflare.recipe.poc_env import PocEnv
    from nvflare.recipe.sim_env import SimEnv

    if isinstance(env, SimEnv):
        from clara_fl.fl.jobs.allow_list import write_simulator_policy

        write_simulator_policy(os.path.join(env.workspace_root, recipe.name))
    note = staging / "poc_custom" / "README.md"
    if isinstance(env, PocEnv) and not note.exists():
        note.parent.mkdir(parents=True, exist_ok=True)
        note.write_text(POC_CUSTOM_NOTE)
        if to_server:
            recipe.add_server_file(str(note.parent))
        recipe.add_client_file(str(note.parent))
