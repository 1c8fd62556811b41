"""`pipeline_splitter: torch`: pipeline stages of any exportable model, cut by torch's tracer.

`torch.distributed.pipelining.pipeline` exports the whole model (`torch.export`) with split points
before the first block of every stage and returns one graph module per stage. Those modules hold
the model's own parameter objects, so the model keeps its class, names and checkpoints; this rank
then drops every parameter its stages do not use.

An exported graph is specialised to the example's shape (batch rows and sequence length) and to the
mode it was traced in, so the model is traced twice (training and evaluation mode: dropout) with one
micro-batch of the training data, and every micro-batch must have that shape (`fit_to_trace`).
Weights shared between modules (tied embeddings) are refused: the tracer gives each stage its own
copy, which would drift apart; the manual splitter keeps them tied.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from forgather.errors import ForgatherError


class TraceSplitError(ForgatherError):
    """torch's tracer cannot cut this model into the pipeline stages asked for."""


class _Inputs(nn.Module):
    """The model called as a pipeline's first stage calls it: (ids, positions, mask) -> logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        params = inspect.signature(model.forward).parameters
        self._extra = {"use_cache": False} if "use_cache" in params else {}

    def forward(self, input_ids, position_ids, attention_mask):
        out = self.model(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            **self._extra,
        )
        if isinstance(out, torch.Tensor):
            return out
        logits = getattr(out, "logits", None)
        return logits if logits is not None else out[0]


_INPUT_NAMES = ("input_ids", "position_ids", "attention_mask")


class _FirstStage(nn.Module):
    """The traced first stage, called with (ids, positions, mask) in that order.

    The tracer orders a stage's inputs by first use, and the signature torch gives the first stage
    maps the model's arguments onto them by position — wrong when the model reads its mask before
    its positions (Hugging Face's Llama does). So the stage keeps its plain graph signature and
    gets its inputs by name."""

    def __init__(self, stage: nn.Module):
        super().__init__()
        stage.graph._codegen = torch.fx.graph.CodeGen()
        stage.recompile()
        self.stage = stage
        self.inputs = [n.target for n in stage.graph.nodes if n.op == "placeholder"]
        unknown = [name for name in self.inputs if name not in _INPUT_NAMES]
        if unknown:
            raise TraceSplitError(
                f"the traced first pipeline stage takes {unknown}, not only {list(_INPUT_NAMES)}"
            )

    def forward(self, input_ids, position_ids, attention_mask):
        given = dict(zip(_INPUT_NAMES, (input_ids, position_ids, attention_mask), strict=True))
        return self.stage(*(given[name] for name in self.inputs))


def shared_weights(model: nn.Module) -> list[list[str]]:
    """Names of the parameters that are one tensor under several names (tied weights)."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return [group for group in names.values() if len(group) > 1]


def block_list(model: nn.Module) -> tuple[str, int]:
    """The qualified name of the model's list of repeated blocks and its length."""
    from forgather.ml.unwrap import transformer_blocks

    blocks = {id(b) for b in transformer_blocks(model)}
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and id(module[0]) in blocks:
            return name, len(module)
    raise TraceSplitError(
        f"pipeline_splitter=torch cuts {type(model).__name__} before its repeated blocks, but it "
        "has no list of them (neither `_no_split_modules` classes in a ModuleList nor a ModuleList "
        "of one class)"
    )


def trace_stages(
    model: nn.Module,
    ranges: list[range],
    example: tuple[torch.Tensor, ...],
    stages: list[int],
    train: bool,
) -> list[nn.Module]:
    """The graph modules of `stages` of `model` cut before the first block of every range, traced
    with `example` in training (`train`) or evaluation mode."""
    import warnings

    from torch.distributed.pipelining import SplitPoint, pipeline

    blocks, _ = block_list(model)
    spec = {f"model.{blocks}.{r.start}": SplitPoint.BEGINNING for r in ranges[1:]}
    wrapper = _Inputs(model)
    was_training = model.training
    model.train(train)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe = pipeline(wrapper, example, split_spec=spec)
    except Exception as error:  # torch.export's many ways to fail
        cause = error.__cause__ or error
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise TraceSplitError(
            f"pipeline_splitter=torch could not trace {type(model).__name__} as one graph "
            f"({type(cause).__name__}: {first}); make it exportable (torch.export) or use "
            "pipeline_splitter=manual for forgather causal LMs"
        ) from None
    finally:
        model.train(was_training)
        for name in spec:  # the split markers wrapped the blocks' forward: restore it
            module = model.get_submodule(name.removeprefix("model."))
            if "forward" in module.__dict__:
                del module.forward
    if pipe.num_stages != len(ranges):
        raise TraceSplitError(
            f"torch's tracer cut {type(model).__name__} into {pipe.num_stages} stages, not "
            f"{len(ranges)}"
        )
    own = {id(p) for p in model.parameters()}
    modules = []
    for stage in stages:
        module = pipe.get_stage_module(stage)
        if stage == 0:
            module = _FirstStage(module)
        copied = [n for n, p in module.named_parameters() if id(p) not in own]
        if copied:
            raise TraceSplitError(
                f"torch's tracer copied parameter {copied[0]} of stage {stage}: its updates would "
                "not reach the model"
            )
        modules.append(module)
    return modules


def keep_only(model: nn.Module, modules: list[nn.Module]) -> None:
    """Drop every parameter of `model` that none of `modules` uses (this rank's stages), so its
    parameters, state dict and optimizer hold only this rank's share, under their own names."""
    used = {id(p) for m in modules for p in m.parameters()}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and id(param) not in used:
                module.register_parameter(name, None)


def fit_to_trace(batch: dict[str, Any], length: int) -> dict[str, Any]:
    """A batch whose sequences are `length` long: shorter ones right-padded (masked, labels
    -100, so the loss is unchanged); a longer one is refused."""
    ids = batch["input_ids"]
    have = ids.shape[1]
    if have == length:
        return batch
    if have > length:
        raise TraceSplitError(
            f"pipeline_splitter=torch traced sequences of {length} tokens; this batch has {have}: "
            "pad or pack every batch to one length (the first batch's)"
        )
    from forgather.ml.train.parallel.pipeline import first_stage_inputs

    pad = length - have
    out = dict(batch)
    labels = batch.get("labels")
    out["labels"] = nn.functional.pad(ids if labels is None else labels, (0, pad), value=-100)
    _, positions, mask = first_stage_inputs(batch)
    out["input_ids"] = nn.functional.pad(ids, (0, pad), value=0)
    out["attention_mask"] = nn.functional.pad(mask, (0, pad), value=0)
    tail = positions[:, -1:] + torch.arange(1, pad + 1, device=ids.device)
    out["position_ids"] = torch.cat((positions, tail), dim=1)
    return out
