"""Data order and position, the distributed environment, the loss, and RNG capture."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from forgather.ml.train.data_state import (
    DataPosition,
    EvalBatchSampler,
    ResumableDistributedSampler,
    batches_per_epoch,
    check_data_state,
    data_state_dict,
)
from forgather.ml.train.distributed import DistributedEnvironment
from forgather.ml.train.loss import causal_lm_loss
from forgather.ml.train.rng import get_rng_state, set_rng_state, set_seed

pytestmark = pytest.mark.unit


def test_sampler_is_a_seeded_permutation_per_epoch():
    sampler = ResumableDistributedSampler(20, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(20)) and first != list(range(20))
    assert list(ResumableDistributedSampler(20, seed=3)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == list(range(20))


def test_sampler_shards_by_rank_like_distributed_sampler():
    single = ResumableDistributedSampler(11, seed=0).epoch_indices(0)
    ranks = [ResumableDistributedSampler(11, seed=0, rank=r, world_size=2) for r in range(2)]
    shards = [s.epoch_indices(0) for s in ranks]
    assert len(shards[0]) == len(shards[1]) == 6  # padded by repeating the start
    assert shards[0][:5] == single[0:10:2] and shards[1][:5] == single[1:10:2]
    dropped = [
        ResumableDistributedSampler(11, seed=0, rank=r, world_size=2, drop_last=True)
        for r in range(2)
    ]
    assert sorted(dropped[0].epoch_indices(0) + dropped[1].epoch_indices(0)) == sorted(single[:10])


def test_sampler_resumes_part_way_into_an_epoch():
    sampler = ResumableDistributedSampler(20, seed=5, rank=1, world_size=2)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, start=4)
    assert list(sampler) == full[4:] and len(sampler) == len(full) - 4
    assert batches_per_epoch(sampler, 3, drop_last=False) == 4
    assert batches_per_epoch(sampler, 3, drop_last=True) == 3


def test_data_state_is_checked_against_the_current_setup():
    sampler = ResumableDistributedSampler(20, seed=5)
    state = data_state_dict(DataPosition(epoch=2, batches_consumed=3), sampler, 4)
    assert check_data_state(state, sampler, 4) == DataPosition(2, 3)
    # 12 samples consumed: not a whole number of batches of 8 ...
    with pytest.raises(ValueError, match="12 samples into epoch 2 .* not a whole number"):
        check_data_state(state, sampler, 8)
    # ... but 6 micro-batches of 2, or 3 per rank of 2 ranks x 2 (the same global batch).
    assert check_data_state(state, sampler, 2) == DataPosition(2, 6)
    two_ranks = ResumableDistributedSampler(20, seed=5, rank=1, world_size=2)
    assert check_data_state(state, two_ranks, 2) == DataPosition(2, 3)
    with pytest.raises(ValueError, match="dataset_size differs"):
        check_data_state(state, ResumableDistributedSampler(21, seed=5), 4)


def test_eval_batches_are_dealt_round_robin_and_limited_in_total():
    single = list(EvalBatchSampler(10, 3))
    assert single == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    ranks = [list(EvalBatchSampler(10, 3, rank=r, world_size=2, max_batches=3)) for r in range(2)]
    assert ranks == [[[0, 1, 2], [6, 7, 8]], [[3, 4, 5]]]


def test_sharded_eval_gives_every_rank_as_many_batches_counting_only_its_own():
    # a sharded model's forward is a collective: a rank without batches would hang the others
    samplers = [
        EvalBatchSampler(10, 3, rank=r, world_size=3, max_batches=4, equal_counts=True)
        for r in range(3)
    ]
    assert [list(s) for s in samplers] == [
        [[0, 1, 2], [9]],
        [[3, 4, 5], [0, 1, 2]],  # a repeat, to keep step
        [[6, 7, 8], [0, 1, 2]],
    ]
    assert [s.real_batches for s in samplers] == [2, 1, 1]


def test_environment_reads_only_torchrun_variables():
    env = DistributedEnvironment.from_env(
        {
            "RANK": "3",
            "LOCAL_RANK": "1",
            "WORLD_SIZE": "4",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29500",
        }
    )
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size) == (3, 1, 4, 2)
    assert env.is_distributed and not env.is_main_process and env.master_port == 29500
    single = DistributedEnvironment.from_env({})
    assert (single.rank, single.world_size, single.is_distributed) == (0, 1, False)
    assert single.default_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert single.default_device() == torch.device("cpu")
    t = torch.ones(2)
    assert single.all_reduce(t, "mean") is t and single.broadcast_object(5) == 5
    single.barrier()
    single.init_process_group(torch.device("cpu"))  # world size 1: nothing to join
    with pytest.raises(ValueError, match="RANK=4"):
        DistributedEnvironment.from_env({"RANK": "4", "WORLD_SIZE": "2"})


def test_causal_lm_loss_shifts_and_ignores_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[1, 2, 3, 4, 5], [1, 2, -100, -100, -100]])
    expected = torch.nn.functional.cross_entropy(
        torch.cat([logits[0, :4], logits[1, :1]]), torch.tensor([2, 3, 4, 5, 2])
    )
    assert torch.allclose(causal_lm_loss(logits, labels), expected)


def test_causal_lm_loss_matches_the_hf_model_loss():
    from tests.unit.train._tiny import tiny_llama

    torch.manual_seed(0)
    model = tiny_llama()
    ids = torch.randint(0, 256, (2, 16))
    out = model(input_ids=ids, labels=ids)
    assert torch.allclose(causal_lm_loss(out.logits, ids), out.loss, atol=1e-6)


def test_rng_state_round_trip_through_torch_save(tmp_path):
    set_seed(1)
    state = get_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_seed(2)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
