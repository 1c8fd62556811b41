"""TrainerControlCallback: act on `forgather control save|stop|save-stop|abort` commands."""

from __future__ import annotations

import atexit
import sys
import time
from typing import Any, TextIO

from forgather.ml.train.callbacks.base import TrainerCallback
from forgather.ml.train.control import ControlError, ControlServer

SAVE, STOP, ABORT = 1, 2, 4
COMMAND_BITS = {"save": SAVE, "stop": STOP, "save-stop": SAVE | STOP, "abort": ABORT | STOP}


def command_bits(commands: list[str]) -> int:
    bits = 0
    for command in commands:
        bits |= COMMAND_BITS[command]
    return bits


def apply_bits(bits: int, control: Any) -> None:
    """Set the TrainerControl flags a command bitmask asks for."""
    if bits & SAVE:
        control.should_save = True
    if bits & STOP:
        control.should_training_stop = True
    if bits & ABORT:
        control.should_abort_without_save = True
        control.should_training_stop = True


def describe_bits(bits: int) -> str:
    """The one command a bitmask amounts to: abort, save-stop, stop or save."""
    if bits & ABORT:
        return "abort"
    if bits & SAVE and bits & STOP:
        return "save-stop"
    return "stop" if bits & STOP else "save"


def _number(value: Any) -> Any:
    if hasattr(value, "item"):
        try:
            return value.item()
        except (TypeError, ValueError, RuntimeError):
            return str(value)
    return value


class TrainerControlCallback(TrainerCallback):
    """Lets `forgather control` save, stop or abort a running training job.

    Rank 0 starts a `ControlServer` (HTTP on `host`, default 127.0.0.1, `port` 0 = any free port,
    per-job bearer token, discovery file; `job_id` defaults to `<output dir name>-<hex>`) at
    on_train_begin and stops it at on_train_end. At every on_step_end rank 0 drains the mailbox; when
    torch.distributed is initialized the commands (a bitmask in one int64 tensor) are broadcast from
    rank 0 to every rank, each step, so all ranks set the same flags on the same step:

    * save -> `should_save`
    * stop -> `should_training_stop` (the trainer still writes its final checkpoint)
    * save-stop -> both
    * abort -> `should_abort_without_save` and `should_training_stop`

    Several commands arriving within one step are combined. Every rank must call on_step_end on every
    step (the broadcast is a collective).
    """

    def __init__(
        self,
        job_id: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        announce: bool = True,
        output: TextIO | None = None,
    ):
        self.job_id = job_id
        self.host = host
        self.port = port
        self.announce = announce
        self.output = output
        self.server: ControlServer | None = None
        self._status: dict[str, Any] = {}
        self._broadcast_device: Any = None
        self.last_command: dict[str, Any] | None = None

    # ---- server side (rank 0) ----

    def _status_snapshot(self) -> dict[str, Any]:
        return dict(self._status)  # replaced wholesale by the training thread: a consistent copy

    def _update_status(self, trainer_state: Any, /, **extra: Any) -> None:
        status = dict(self._status)
        status.update(
            global_step=trainer_state.global_step,
            max_steps=trainer_state.max_steps,
            epoch=trainer_state.epoch,
            world_size=trainer_state.world_size,
            num_input_tokens_seen=trainer_state.num_input_tokens_seen,
            updated=time.time(),
        )
        status.update(extra)
        self._status = status

    def on_train_begin(self, args, state, control, **kwargs):
        self._broadcast_device = None
        if not state.is_world_process_zero:
            return
        output_dir = getattr(args, "output_dir", None)
        self.server = ControlServer(
            job_id=self.job_id,
            host=self.host,
            port=self.port,
            output_dir=output_dir,
            status_fn=self._status_snapshot,
        )
        try:
            info = self.server.start()
        except (OSError, ControlError) as error:  # no port, a bad jobs dir: train on without it
            self.server.stop()
            self.server = None
            sys.stderr.write(f"forgather: trainer control is off for this run: {error}\n")
            return
        atexit.register(self._shutdown)
        self._update_status(state, state="running", loss=None)
        if self.announce:
            out = self.output if self.output is not None else sys.stdout
            print(
                f"trainer control: job {info.job_id} at {info.url} "
                f"(forgather control status {info.job_id})",
                file=out,
                flush=True,
            )

    def _shutdown(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    @property
    def job_info(self):
        return self.server.info if self.server is not None else None

    # ---- every step ----

    def _distributed(self) -> bool:
        try:
            import torch.distributed as dist
        except ImportError:
            return False
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def _device(self) -> Any:
        if self._broadcast_device is None:
            import torch
            import torch.distributed as dist

            backend = str(dist.get_backend()).lower()
            if backend == "nccl":
                self._broadcast_device = torch.device("cuda", torch.cuda.current_device())
            else:
                self._broadcast_device = torch.device("cpu")
        return self._broadcast_device

    def _local_bits(self, state: Any) -> int:
        if not state.is_world_process_zero or self.server is None:
            return 0
        return command_bits(self.server.drain())

    def on_step_end(self, args, state, control, **kwargs):
        bits = self._local_bits(state)
        if self._distributed():
            import torch
            import torch.distributed as dist

            tensor = torch.tensor([bits], dtype=torch.int64, device=self._device())
            dist.broadcast(tensor, src=0)
            bits = int(tensor.item())
        if bits:
            apply_bits(bits, control)
            self.last_command = {"command": describe_bits(bits), "step": state.global_step}
        if state.is_world_process_zero and self.server is not None:
            extra: dict[str, Any] = {}
            if bits:
                extra["last_command"] = self.last_command
                if control.should_training_stop:
                    extra["state"] = "stopping"
            self._update_status(state, **extra)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.server is None or not logs:
            return
        extra = {}
        for key in ("loss", "learning_rate", "grad_norm", "tokens_per_second", "eval_loss"):
            if key in logs:
                extra[key] = _number(logs[key])
        if extra:
            self._update_status(state, **extra)

    def on_train_end(self, args, state, control, **kwargs):
        self._shutdown()
