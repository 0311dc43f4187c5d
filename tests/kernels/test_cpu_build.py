"""The CPU kernels' library: every entry point checked against its reference when it loads."""

import shutil

import pytest

from recsys.kernels import cpu_build, cpu_dropout, cpu_encoder, cpu_ranking, cpu_softmax_ce

pytestmark = pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler")


@pytest.fixture(autouse=True)
def _fresh_kernel_state(monkeypatch):
    monkeypatch.setattr(cpu_build, "_state", None)
    monkeypatch.setattr(cpu_build, "_library", None)


def test_every_entry_point_passes_its_self_check():
    assert cpu_build.available()
    assert cpu_encoder.self_check() and cpu_ranking.self_check() and cpu_dropout.self_check()
    assert cpu_softmax_ce.self_check_ce() and cpu_softmax_ce.self_check_bf16()
    assert cpu_build._failed_self_checks() == []


def test_the_tile_sizes_are_read_from_the_library(monkeypatch):
    monkeypatch.setattr(cpu_build, "TILES", {"query_tile": 0, "rank_chunk": 0, "ce_positions": 0})
    assert cpu_build.available()
    assert cpu_build.TILES == {"query_tile": 6, "rank_chunk": 1024, "ce_positions": 48}


@pytest.mark.parametrize(
    "module, check, entry",
    [
        (cpu_ranking, "self_check", "recsys_rank_counts"),
        (cpu_dropout, "self_check", "recsys_keep_mask"),
        (cpu_softmax_ce, "self_check_bf16", "recsys_bf16_exp_colsum"),
    ],
)
def test_one_failing_entry_point_turns_the_kernels_off_and_is_named(monkeypatch, module, check, entry):
    monkeypatch.setattr(module, check, lambda: False)
    with pytest.warns(RuntimeWarning, match=f"disagreed with their PyTorch references \\({entry}\\)"):
        assert not cpu_build.available()
    with pytest.raises(RuntimeError, match="not loaded"):
        cpu_build.library()


def test_loading_the_kernels_leaves_torchs_random_stream_alone():
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    assert cpu_build.available()  # the self-checks run here
    assert torch.equal(torch.rand(3), expected)
