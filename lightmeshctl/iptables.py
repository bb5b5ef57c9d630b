"""Runs an interception plan with the iptables program: the I/O edge of `lightmesh intercept`."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

from lightmesh.intercept import Command


class InterceptError(RuntimeError):
    """An iptables command that must succeed failed; the message has its command and stderr."""


def run_plan(commands: Sequence[Command], *, program: str = "iptables") -> list[str]:
    """Run each command in order; return the command lines run (for the log).

    A failing command stops the plan unless it is marked `may_fail`.
    """
    binary = shutil.which(program)
    if binary is None:
        raise InterceptError(f"{program} not found on PATH (install the iptables package)")
    ran = []
    for command in commands:
        line = " ".join([program, *command.args])
        result = subprocess.run(
            [binary, "-w", "5", *command.args], capture_output=True, text=True, check=False
        )
        if result.returncode != 0 and not command.may_fail:
            raise InterceptError(f"{line} exited {result.returncode}: {result.stderr.strip()}")
        ran.append(line if result.returncode == 0 else f"{line}  # skipped: nothing to remove")
    return ran


def dump(*, program: str = "iptables-save") -> str:
    """The current nat table, as iptables-save prints it."""
    binary = shutil.which(program)
    if binary is None:
        raise InterceptError(f"{program} not found on PATH (install the iptables package)")
    return subprocess.run([binary, "-t", "nat"], capture_output=True, text=True, check=True).stdout
