"""`TrainingArguments`: what a training run does, with the field names Hugging Face users know.

Every field carries a docstring (the string literal under it); `field_docs()` reads them, and
`docs/trainers/options.md` is generated from them (`python -m forgather.ml.train.options_doc`).
Built from a config (`!singleton:forgather.ml.train.args:TrainingArguments {...}`) the config engine
checks keyword names against this dataclass's signature and reports unknown ones with file and line;
`TrainingArguments.from_dict(d, source=...)` gives the same kind of error for plain dictionaries.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import os
import textwrap
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

OPTIMIZERS = ("adamw", "sgd", "muon", "apollo", "apollo_mini", "adafactor", "sinkgd")
"""The values of `optim`: a torch-free copy of `forgather.ml.optim.OPTIMIZERS` (a test keeps them
equal), so a config is checked without importing torch."""

LR_SCHEDULERS = ("linear", "cosine", "constant", "wsd", "infinite")
STRATEGIES = ("no", "steps", "epoch")
PARALLELISMS = ("ddp", "fsdp", "pipeline", "diloco")
PIPELINE_SPLITTERS = ("auto", "manual", "torch")
FUSED_LOSSES = ("auto", "off", "model", "torch", "liger")
MAX_STEPS = 1_000_000_000  # a run of more optimizer steps is a typo, not a plan
MAX_EPOCHS = 1_000_000
# The fields that change a run's optimisation: a checkpoint records them, a resume compares them.
CHECKPOINT_POLICIES = ("full", "selective")
"""The values of `gradient_checkpointing_policy` (forgather.ml.train.activation_checkpointing)."""

COMPILE_SCOPES = ("model", "blocks")
"""The values of `torch_compile_scope`."""

SDPA_BACKENDS = ("auto", "flash", "cudnn", "efficient", "math")
"""The values of `sdpa_backend` (forgather.ml.train.fast_path applies them)."""

FP8_RECIPES = ("tensorwise", "rowwise", "rowwise_with_gw_hp")
"""The values of `fp8`, torchao's recipe names (forgather.ml.train.fp8 applies them)."""

HYPERPARAMETERS = (
    "learning_rate",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "optim",
    "optim_kwargs",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "warmup_ratio",
    "max_grad_norm",
    "bf16",
    "fp16",
)
PIPELINE_SCHEDULES = (
    "GPipe",
    "1F1B",
    "Interleaved1F1B",
    "LoopedBFS",
    "InterleavedZeroBubble",
    "ZBV",
)
FSDP_DTYPES = ("bfloat16", "float16", "float32")


def _timestamp() -> str:
    return datetime.now().strftime("%Y-%m-%dT%H-%M-%S")


@dataclass
class TrainingArguments:
    """Arguments of a training run. All are keyword arguments; see `docs/trainers/options.md`."""

    # --- output ---
    output_dir: str = "output"
    """Directory for checkpoints (`<output_dir>/checkpoints/`) and the saved model."""

    logging_dir: str | None = None
    """Directory for logs (TensorBoard, JSON lines); None means `<output_dir>/runs/<run_name>`."""

    run_name: str | None = None
    """Name of this run, used in `logging_dir`; None means the start time, `YYYY-MM-DDTHH-MM-SS`."""

    overwrite_output_dir: bool = False
    """Start from scratch even if `<output_dir>/checkpoints/` holds checkpoints (they are deleted).
    Without it, and without `resume_from_checkpoint`, existing checkpoints are an error."""

    # --- batches and length ---
    per_device_train_batch_size: int = 8
    """Training samples per micro-batch on each process."""

    per_device_eval_batch_size: int = 8
    """Evaluation samples per batch on each process."""

    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step; the global batch is this × per-device batch × world size."""

    num_train_epochs: float = 3.0
    """Epochs to train (may be fractional); ignored when `max_steps` > 0."""

    max_steps: int = -1
    """Optimizer steps to train; -1 means derive from `num_train_epochs`."""

    # --- optimizer ---
    learning_rate: float = 5e-5
    """Peak learning rate (the schedule multiplies it)."""

    weight_decay: float = 0.0
    """Decoupled weight decay; biases, norm weights (any parameter with fewer than 2 dims) get none."""

    adam_beta1: float = 0.9
    """AdamW beta1 (SGD: momentum is not used)."""

    adam_beta2: float = 0.999
    """AdamW beta2."""

    adam_epsilon: float = 1e-8
    """AdamW epsilon."""

    optim: str = "adamw"
    """Default optimizer when no `optimizer_factory` is given: "adamw", "sgd", "muon", "apollo",
    "apollo_mini", "adafactor" or "sinkgd" (`forgather.ml.optim.make_optimizer`; docs/optimizers.md).
    The matrix optimizers (muon, apollo, apollo_mini, sinkgd) take the hidden weight matrices and
    leave embeddings, head, norms and biases to AdamW."""

    optim_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments of the `optim` optimizer (e.g. `{momentum: 0.9}` for muon,
    `{rank: 64}` for apollo, `{fused: true}` for adamw)."""

    lr_scheduler_type: str = "linear"
    """Default LR schedule when no `lr_scheduler_factory` is given: "linear", "cosine", "constant",
    "wsd" (warmup-stable-decay) or "infinite" (see `forgather.ml.optim`)."""

    lr_scheduler_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments of the schedule (e.g. `min_lr_ratio`, `decay_ratio`)."""

    warmup_steps: int = 0
    """Linear warmup steps; when 0, `warmup_ratio` × total steps is used."""

    warmup_ratio: float = 0.0
    """Fraction of the total steps used for warmup when `warmup_steps` is 0."""

    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this; None only measures it (logged as `grad_norm`)."""

    # --- precision ---
    bf16: bool = False
    """Run forward passes under bfloat16 autocast."""

    fp16: bool = False
    """Run forward passes under float16 autocast with a gradient scaler."""

    # --- evaluation ---
    eval_strategy: str = "no"
    """When to evaluate: "no", "steps" (every `eval_steps`) or "epoch"."""

    eval_steps: int | None = None
    """Evaluate every this many optimizer steps (eval_strategy "steps"); None means `logging_steps`."""

    max_eval_steps: int = -1
    """Evaluate at most this many batches in total (shared among processes); -1 means all."""

    # --- logging ---
    logging_strategy: str = "steps"
    """When to log training metrics: "no", "steps" (every `logging_steps`) or "epoch"."""

    logging_steps: int = 500
    """Log every this many optimizer steps (logging_strategy "steps")."""

    logging_first_step: bool = False
    """Also log after the first optimizer step."""

    # --- checkpoints ---
    save_strategy: str = "steps"
    """When to write a checkpoint: "no", "steps" (every `save_steps`) or "epoch". Unless "no",
    a final checkpoint is also written at the end of training (not when aborting)."""

    save_steps: int = 500
    """Write a checkpoint every this many optimizer steps (save_strategy "steps")."""

    save_total_limit: int | None = None
    """Keep only the newest this many checkpoints (by step number); None keeps all."""

    save_on_each_node: bool = False
    """Nodes without a shared filesystem (detected by itself): copy every file of each checkpoint
    to every node after saving, so that any node can resume alone (`fgl up --elastic` sets it through
    FORGATHER_SAVE_ON_EACH_NODE=1). Off, each node keeps the shards its ranks wrote plus the small
    shared files, and a resume on the same nodes exchanges what each node lacks. No effect when all
    ranks share one output directory."""

    save_best: bool = False
    """Keep the checkpoint with the best `metric_for_best_model` from pruning, and write a checkpoint
    whenever an evaluation improves on the best so far. Needs evaluation."""

    metric_for_best_model: str = "eval_loss"
    """Metric that ranks checkpoints for `save_best` and `load_best_model_at_end`."""

    greater_is_better: bool | None = None
    """Whether a larger `metric_for_best_model` is better; None means False for names ending in
    "loss" or "perplexity", else True."""

    load_best_model_at_end: bool = False
    """After training (and the final checkpoint), load the weights of the best checkpoint."""

    resume_from_checkpoint: bool | str | None = None
    """Resume exactly: None/False start fresh; True or "latest" the newest complete checkpoint in
    `output_dir`; "auto" the newest if there is one, else start fresh (what `fgl up --elastic`
    restarts use); a path that checkpoint. Anything missing or mismatched is an error."""

    allow_changed_hyperparameters: bool = False
    """Resume a checkpoint although this run's optimisation hyper-parameters (`HYPERPARAMETERS`:
    learning rate, schedule, warm-up, optimizer and its settings, clipping, precision) differ from
    the ones it was trained with; without it such a resume stops with one line listing the
    changes, before anything is loaded."""

    keep_global_batch: bool = False
    """On a resume into another number of data-parallel ranks, set `gradient_accumulation_steps`
    so that per-device batch x accumulation x ranks stays what the checkpoint trained with (when it
    divides; otherwise a warning, and the global batch changes). `fgl up --elastic` sets it through
    FORGATHER_KEEP_GLOBAL_BATCH=1. Not for the pipeline strategy (its micro-batches are fixed)."""

    # --- reproducibility and data ---
    seed: int = 42
    """Seed for Python, NumPy and torch before the model is built."""

    data_seed: int | None = None
    """Seed of the per-epoch data order; None means `seed`."""

    dataloader_num_workers: int = 0
    """Worker processes of each DataLoader."""

    dataloader_drop_last: bool = False
    """Drop the last incomplete batch of each epoch (and the remainder that does not shard evenly)."""

    dataloader_pin_memory: bool = True
    """Pin host memory of batches (only effective on CUDA)."""

    # --- speed ---
    fused_loss: str = "auto"
    """The loss of a forgather causal LM computed fused with its head from the final hidden states,
    a chunk of tokens at a time, so the (tokens x vocab) logits never exist: "torch" (chunked
    PyTorch, any device), "liger" (Liger-Kernel's Triton kernel, CUDA, `pip install liger-kernel`),
    "auto" (on CUDA: liger when installed, else torch; off on CPU) or "off" (the loss from the
    logits). Other models and a custom `compute_loss_func` use the logits ("auto" falls back).
    "model": any causal LM computes its own loss from the labels inside its forward, so under
    `torch_compile` the head and the loss compile together (the logits exist, but in the fastest
    form; the fused choices save their memory instead)."""

    optimizer_in_backward: bool = False
    """Step each parameter's optimizer in the backward pass, as soon as its gradient is complete,
    and free that gradient at once: the whole model's gradients never exist together (less peak
    memory; the same updates). One process only, `gradient_accumulation_steps: 1`,
    `max_grad_norm: null` (no global clipping: no parameter waits for the others; the norm is
    still logged) and no fp16; each is one clear error."""

    torch_compile: bool = False
    """Compile the model with `torch.compile`."""

    torch_compile_backend: str | None = None
    """`torch.compile` backend; None means torch's default ("inductor")."""

    torch_compile_mode: str | None = None
    """`torch.compile` mode (e.g. "max-autotune"); None means torch's default."""

    torch_compile_scope: str = "model"
    """What `torch_compile` compiles: "model" (the whole model, one graph: the fastest steps) or
    "blocks" (each repeated transformer block on its own, in place — regional compilation: blocks
    of one class share one compiled graph, so compile time stays one block's however deep the
    model; the embedding and head run eagerly)."""

    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (the model must support
    `gradient_checkpointing_enable()`)."""

    gradient_checkpointing_every: int = 1
    """With `gradient_checkpointing`: recompute only every k-th transformer layer (layers 0, k, 2k,
    ...), keeping the others' activations — between no checkpointing (fast, most memory) and every
    layer (1, the least memory). Forgather causal LMs only."""

    # --- devices and distribution ---
    device: str | None = None
    """Device to train on; None means `cuda:<LOCAL_RANK>` when CUDA is available, else "cpu"."""

    ddp_backend: str | None = None
    """torch.distributed backend; None means "nccl" on CUDA, else "gloo"."""

    ddp_find_unused_parameters: bool = False
    """Passed to DistributedDataParallel as `find_unused_parameters`."""

    ddp_timeout: int = 1800
    """Timeout of collective operations, in seconds."""

    # --- parallelism (docs/trainers/parallel.md) ---
    parallelism: str = "ddp"
    """How the model is spread over the processes: "ddp" (every rank holds the whole model),
    "fsdp" (FSDP2: parameters, gradients and optimizer state sharded over the ranks), "pipeline"
    (the layers split into stages over the ranks) or "diloco" (workers train alone, averaging their
    progress every `diloco_sync_every` steps)."""

    fsdp_reshard_after_forward: bool = True
    """FSDP: free each block's gathered parameters after its forward (less memory, one more
    all-gather in the backward); False keeps them until the backward (ZeRO-2-like)."""

    fsdp_cpu_offload: bool = False
    """FSDP: keep the sharded parameters, gradients and optimizer state in CPU memory."""

    fsdp_param_dtype: str | None = None
    """FSDP: the dtype blocks compute in ("bfloat16", "float16", "float32"); gradients are reduced in
    float32 and the sharded master weights stay float32. None means bfloat16 when `bf16`, else
    float32."""

    pipeline_schedule: str = "1F1B"
    """Pipeline: the schedule — "GPipe", "1F1B", "Interleaved1F1B", "LoopedBFS",
    "InterleavedZeroBubble" or "ZBV". The step's micro-batches are its `gradient_accumulation_steps`
    micro-batches."""

    pipeline_stages_per_rank: int | None = None
    """Pipeline: stages each rank runs; None means 1 for GPipe and 1F1B, 2 for the interleaved,
    looped and zero-bubble schedules (ZBV needs 2). Pipeline ranks x this must divide the layers."""

    pipeline_splitter: str = "auto"
    """Pipeline: how the model is cut into stages — "manual" (forgather causal LMs, by layer ranges;
    tied embeddings stay tied), "torch" (torch's tracer, `torch.distributed.pipelining.pipeline`:
    any model `torch.export` captures whole, cut before its repeated blocks; untied weights, one
    micro-batch shape) or "auto" (manual for forgather causal LMs, torch for others)."""

    pipeline_build_on_meta: bool = False
    """Pipeline: build the model on the `meta` device (no memory) and materialise only this rank's
    stages, directly on its device, each module initialised from the seed and its name (the tied
    embedding alike on the first and last stage). For models whose whole fp32 copy per process does
    not fit host memory. The initial weights differ from a one-process build's (same
    distributions); a resumed run's are the checkpoint's either way. Needs `model_init`."""

    pipeline_fsdp: int = 1
    """Pipeline x FSDP (2-D): shard every stage with FSDP2 over this many ranks, which split the
    batch between them; world size = pipeline_fsdp x pipeline ranks. Consecutive ranks (a node's)
    share a stage, so the FSDP all-gathers stay inside a node and only activations cross nodes. The
    `fsdp_*` options apply to the stages."""

    diloco_sync_every: int = 50
    """DiLoCo: inner optimizer steps between synchronisations (H); the workers all-reduce once per
    H steps. A save at a step that is not a multiple of H synchronises first."""

    diloco_outer_lr: float = 0.7
    """DiLoCo: learning rate of the outer SGD step on the averaged pseudo-gradient."""

    diloco_outer_momentum: float = 0.9
    """DiLoCo: Nesterov momentum of the outer step (0 turns momentum off)."""

    sdpa_backend: str = "auto"
    """The kernel of `scaled_dot_product_attention`: "auto" (torch picks per call), "flash",
    "cudnn" or "efficient" (CUDA only: one clear error elsewhere) or "math" (the reference
    implementation). A kernel that cannot take a call (a head size or mask it does not support)
    makes that call fail instead of falling back."""

    activation_memory_budget: float | None = None
    """With `torch_compile`: the fraction (0, 1] of the compiled graph's activations to keep for the
    backward; the partitioner recomputes the cheapest of the rest (1 keeps what it would anyway,
    lower saves memory for compute). None leaves torch's default."""

    tf32: bool | None = None
    """TF32 for float32 matmuls and convolutions on NVIDIA GPUs (Ampere and later): faster, with a
    10-bit mantissa. None leaves torch's defaults; no effect on CPU."""

    expandable_segments: bool | None = None
    """CUDA's caching allocator grows its memory segments in place instead of reserving new fixed
    blocks: far less fragmentation when tensor shapes change from step to step (variable-length or
    packed batches, evaluation between steps), so a run that is close to the limit fits. In effect
    during `train()` for the memory allocated then; None leaves the allocator's own setting
    (`PYTORCH_ALLOC_CONF`); no effect on CPU."""

    fp8: str | None = None
    """FP8 training through torchao (`pip install torchao`; NVIDIA GPUs of compute capability
    8.9+, e.g. H100, L4, RTX 4090): the linear layers of the blocks run their matmuls in float8 with
    dynamic scales. "tensorwise" (one scale per tensor: the fastest), "rowwise" (a scale per row:
    more accurate) or "rowwise_with_gw_hp" (also the weight gradient in high precision: the most
    accurate). Pair with `bf16` and `torch_compile` (eager float8 is slow). None trains without.
    The output head and layers whose sizes are not multiples of 16 stay as they are."""

    gradient_checkpointing_policy: str = "full"
    """With `gradient_checkpointing`: what a recomputed layer keeps — "full" (only its input: the
    least memory, the backward repeats the layer's forward) or "selective" (also the outputs of its
    matrix multiplications and attention; only the cheap element-wise ops are recomputed, so no
    matmul runs twice: more memory than "full", far less than no checkpointing)."""

    fsdp_replicate: int = 1
    """FSDP: HSDP replica groups. With R > 1 the world is an R x (world/R) mesh: parameters are
    sharded within a group (e.g. one node's GPUs) and replicated across the R groups."""

    def __post_init__(self) -> None:
        if self.run_name is None:
            self.run_name = _timestamp()
        if self.logging_dir is None:
            self.logging_dir = os.path.join(self.output_dir, "runs", self.run_name)
        if self.data_seed is None:
            self.data_seed = self.seed
        if self.eval_steps is None:
            self.eval_steps = self.logging_steps
        if self.greater_is_better is None:
            name = self.metric_for_best_model
            self.greater_is_better = not (name.endswith("loss") or name.endswith("perplexity"))
        if self.lr_scheduler_kwargs is None:
            self.lr_scheduler_kwargs = {}
        if self.optim_kwargs is None:
            self.optim_kwargs = {}
        if self.resume_from_checkpoint is False:
            self.resume_from_checkpoint = None
        self._validate()

    def _validate(self) -> None:
        def require(condition: bool, name: str, rule: str) -> None:
            if not condition:
                raise ValueError(f"{name} {rule}, got {getattr(self, name)!r}")

        for name in ("per_device_train_batch_size", "per_device_eval_batch_size"):
            require(getattr(self, name) >= 1, name, "must be >= 1")
        require(
            self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "must be >= 1"
        )
        require(
            0 <= self.num_train_epochs <= MAX_EPOCHS,
            "num_train_epochs",
            f"must be in [0, {MAX_EPOCHS}]",
        )
        require(
            self.max_steps == -1 or 0 < self.max_steps <= MAX_STEPS,
            "max_steps",
            f"must be -1 or in [1, {MAX_STEPS:_}] (a typo'd bound would run for ever)",
        )
        require(
            self.max_eval_steps == -1 or self.max_eval_steps > 0,
            "max_eval_steps",
            "must be -1 or > 0",
        )
        require(self.learning_rate >= 0, "learning_rate", "must be >= 0")
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(0 <= self.adam_beta1 < 1, "adam_beta1", "must be in [0, 1)")
        require(0 <= self.adam_beta2 < 1, "adam_beta2", "must be in [0, 1)")
        require(self.adam_epsilon >= 0, "adam_epsilon", "must be >= 0")
        require(self.optim in OPTIMIZERS, "optim", f"must be one of {OPTIMIZERS}")
        require(
            self.lr_scheduler_type in LR_SCHEDULERS,
            "lr_scheduler_type",
            f"must be one of {LR_SCHEDULERS}",
        )
        require(
            isinstance(self.lr_scheduler_kwargs, dict), "lr_scheduler_kwargs", "must be a mapping"
        )
        require(isinstance(self.optim_kwargs, dict), "optim_kwargs", "must be a mapping")
        require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        require(0 <= self.warmup_ratio <= 1, "warmup_ratio", "must be in [0, 1]")
        require(
            self.max_grad_norm is None or self.max_grad_norm > 0,
            "max_grad_norm",
            "must be > 0 or None",
        )
        require(not (self.bf16 and self.fp16), "fp16", "cannot be combined with bf16=True")
        require(
            self.sdpa_backend in SDPA_BACKENDS, "sdpa_backend", f"must be one of {SDPA_BACKENDS}"
        )
        require(
            self.fp8 is None or self.fp8 in FP8_RECIPES,
            "fp8",
            f"must be one of {FP8_RECIPES} or None",
        )
        require(
            self.gradient_checkpointing_policy in CHECKPOINT_POLICIES,
            "gradient_checkpointing_policy",
            f"must be one of {CHECKPOINT_POLICIES}",
        )
        require(
            self.torch_compile_scope in COMPILE_SCOPES,
            "torch_compile_scope",
            f"must be one of {COMPILE_SCOPES}",
        )
        require(
            self.activation_memory_budget is None or 0 < self.activation_memory_budget <= 1,
            "activation_memory_budget",
            "must be in (0, 1] or None",
        )
        for name in ("eval_strategy", "logging_strategy", "save_strategy"):
            require(getattr(self, name) in STRATEGIES, name, f"must be one of {STRATEGIES}")
        for name in ("eval_steps", "logging_steps", "save_steps"):
            require(getattr(self, name) >= 1, name, "must be >= 1")
        require(
            self.save_total_limit is None or self.save_total_limit >= 1,
            "save_total_limit",
            "must be >= 1 or None",
        )
        require(
            not (self.save_best or self.load_best_model_at_end) or self.eval_strategy != "no",
            "eval_strategy",
            "must not be 'no' when save_best or load_best_model_at_end is set",
        )
        require(
            not self.load_best_model_at_end or self.save_strategy != "no",
            "save_strategy",
            "must not be 'no' when load_best_model_at_end is set",
        )
        require(
            self.resume_from_checkpoint is None
            or self.resume_from_checkpoint is True
            or isinstance(self.resume_from_checkpoint, str | os.PathLike),
            "resume_from_checkpoint",
            'must be None, True, "latest", "auto" or a path',
        )
        require(self.dataloader_num_workers >= 0, "dataloader_num_workers", "must be >= 0")
        require(self.ddp_timeout > 0, "ddp_timeout", "must be > 0")
        require(
            self.gradient_checkpointing_every >= 1, "gradient_checkpointing_every", "must be >= 1"
        )
        require(self.fused_loss in FUSED_LOSSES, "fused_loss", f"must be one of {FUSED_LOSSES}")
        require(self.parallelism in PARALLELISMS, "parallelism", f"must be one of {PARALLELISMS}")
        require(
            self.fsdp_param_dtype is None or self.fsdp_param_dtype in FSDP_DTYPES,
            "fsdp_param_dtype",
            f"must be None or one of {FSDP_DTYPES}",
        )
        require(self.fsdp_replicate >= 1, "fsdp_replicate", "must be >= 1")
        require(self.pipeline_fsdp >= 1, "pipeline_fsdp", "must be >= 1")
        require(
            self.pipeline_schedule in PIPELINE_SCHEDULES,
            "pipeline_schedule",
            f"must be one of {PIPELINE_SCHEDULES}",
        )
        require(
            self.pipeline_splitter in PIPELINE_SPLITTERS,
            "pipeline_splitter",
            f"must be one of {PIPELINE_SPLITTERS}",
        )
        require(
            self.pipeline_stages_per_rank is None or self.pipeline_stages_per_rank >= 1,
            "pipeline_stages_per_rank",
            "must be None or >= 1",
        )
        require(self.diloco_sync_every >= 1, "diloco_sync_every", "must be >= 1")
        require(self.diloco_outer_lr > 0, "diloco_outer_lr", "must be > 0")
        require(0 <= self.diloco_outer_momentum < 1, "diloco_outer_momentum", "must be in [0, 1)")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: Any = None) -> TrainingArguments:
        """Build from a mapping; an unknown name raises `ArgumentError` with a close-match hint.

        `source` (an `Origin`, or a file name) says where the mapping came from and prefixes the error.
        """
        from forgather.config.errors import ArgumentError
        from forgather.config.origin import Origin

        known = cls.field_names()
        for name in d:
            if name not in known:
                hint = difflib.get_close_matches(str(name), known, n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                origin = (
                    source if source is None or isinstance(source, Origin) else Origin(str(source))
                )
                raise ArgumentError(f"unknown training argument {name!r}{suggestion}", origin)
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@cache
def field_docs() -> dict[str, str]:
    """The docstring under each field of `TrainingArguments`, by field name (read from the source)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(TrainingArguments)))
    body = tree.body[0].body
    docs: dict[str, str] = {}
    for node, following in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(following.value.value)
    return docs


__all__ = ["TrainingArguments", "field_docs"]
