"""Measuring tuning candidates on a remote device: MetaSchedule's RPC runner behind a tracker.

Candidates are built here (cross-compiled and linked with the preset's cross compiler,
since the device has only TVM's runtime and no linker) and timed on a device that a
tracker hands out under a key. MetaSchedule's RPC runner talks only to trackers, so
tuning takes --tracker/--key (`tvmdeploy board start --local-tracker` starts one).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .. import _tvm
from ..build import cross_linker_options, require_cross_compiler
from ...errors import RemoteError
from ..presets import Preset
from ...runtime.loader import machine_arch
from ...runtime.remote import parse_address, tracker_summary, wait_for_device

# One candidate's session: upload, load, time and free. Emulated boards are slow to
# fork a session (~1-3 s), real boards are slow to load; both fit comfortably.
SESSION_TIMEOUT_S = 120


def require_local_measurement(preset: Preset) -> None:
    """Tuning without a remote device measures here: refuse presets whose code cannot run here."""
    here = machine_arch()
    if preset.device == "cpu" and preset.arch and preset.arch != here:
        raise RemoteError(
            f"preset {preset.name} builds {preset.arch} code, which cannot be measured on this {here} machine; "
            f"tune on a device: tvmdeploy tune MODEL --target {preset.name} --tracker HOST:PORT --key KEY "
            f"(an emulated one: tvmdeploy board start --local-tracker)"
        )


@dataclass(frozen=True)
class RemoteMeasure:
    """Where and how tuning candidates are measured when not on this machine."""

    tracker: str  # HOST:PORT
    key: str
    compiler: str
    linker_options: tuple[str, ...]
    session_timeout_s: float = SESSION_TIMEOUT_S

    @classmethod
    def for_preset(cls, preset: Preset, tracker: str, key: str | None) -> "RemoteMeasure":
        """Check up front that the cross compiler exists and the tracker has a free device for the key."""
        parse_address(tracker, "--tracker")
        if not key:
            raise RemoteError("--tracker needs --key, the device key the board's server registered with")
        if preset.device != "cpu" or not preset.build.cross_compiler:
            raise RemoteError(
                f"remote tuning is for cross-compiled CPU presets (e.g. aarch64-cortex-a72); "
                f"preset {preset.name} has no [build] cross_compiler"
            )
        require_cross_compiler(preset)
        wait_for_device(tracker, key)
        options = tuple(cross_linker_options(preset))
        return cls(tracker=tracker, key=key, compiler=preset.build.cross_compiler, linker_options=options)

    def f_export(self):
        return functools.partial(_tvm.metaschedule_cross_export, self.compiler, list(self.linker_options))

    def runner(self, evaluator_config):
        host, port = parse_address(self.tracker, "--tracker")
        ms = _tvm.ms
        return ms.runner.RPCRunner(
            rpc_config=ms.runner.RPCConfig(
                tracker_host=host, tracker_port=port, tracker_key=self.key,
                session_timeout_sec=int(self.session_timeout_s),
            ),
            evaluator_config=evaluator_config,
            f_alloc_argument=_tvm.metaschedule_alloc_from_host,
            # One session at a time per free device the tracker lists.
            max_workers=max(1, tracker_summary(self.tracker).get(self.key, 1)),
        )
