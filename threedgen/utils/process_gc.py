"""Python's garbage collector around the phases of one ``launch.py`` process.

Importing torch, Lightning, diffusers and transformers leaves about 0.4 M long-lived objects that the
collector tracks. Each full collection walks all of them, and the interpreter runs one more at exit.
For the README's main job on the 2-core machine that was seven full collections during start-up
(0.75 s), one during the export (0.27 s) and 1.5-1.9 s of interpreter shutdown after the last line
(README, "The main job in a minute").

A ``launch.py`` process therefore runs its start-up with the collector off. Once the imports are done,
just before the first system is built, it freezes what start-up made (``gc.freeze``: later collections
skip those objects) and turns the collector back on. Before it exits, it freezes everything, so that
the interpreter's last collection has nothing to walk.

Nothing here touches a system. Systems are built after the freeze, so a stage's system and its
reference cycles are still collected when the next stage releases it. Only a process started as the
program does any of this: an in-process caller (the tests, the web app) keeps Python's defaults.
"""

from __future__ import annotations

import gc

_paused = False


def pause_for_startup() -> None:
    """The program's first step: no collections while the imports run."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def startup_done() -> None:
    """The imports are done: freeze what they made and collect again. A no-op unless paused."""
    global _paused
    if _paused:
        gc.freeze()
        gc.enable()
        _paused = False


def freeze_for_exit() -> None:
    """The program's last step: the interpreter's final collection skips every object alive now.

    Files are closed before this point (threedgen/utils/atomic.py writes through context managers).
    The only finalisers skipped are those of objects caught in reference cycles, and Python does not
    promise to run those at exit anyway."""
    gc.freeze()
