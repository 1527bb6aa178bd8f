"""The four toy applications at small sizes: each loss falls and its outcome is reached."""
import pytest

from adjointdpm import AdjointDEIS, Checkpoint
from toy import apps


def test_guided_sampling_raises_the_target_probability():
    r = apps.guided_sampling(target=2, n=32, iters=12)
    assert r["losses"][-1] < r["losses"][0]
    assert r["prob_before"] < 0.4 and r["prob_after"] > 0.8


def test_audit_flips_decisions_within_the_bound():
    r = apps.audit(taus=(0.25, 0.5), n=60, iters=8, gradient=AdjointDEIS(2))
    assert 0 < r["overall"][0.25] <= r["overall"][0.5]  # a larger ball finds at least as many
    assert r["overall"][0.5] > 0.3


def test_finetune_restyles_seen_and_unseen_noises():
    r = apps.finetune(n=64, iters=15, train_iters=300)
    assert r["style_after"] < 0.2 * r["style_before"]
    assert r["unseen_style_after"] < 0.5 * r["unseen_style_before"]


def test_inversion_recovers_the_hidden_embedding():
    r = apps.invert_embedding(n=32, iters=40, train_iters=800, gradient=Checkpoint())
    assert r["losses"][-1] < 0.05 * r["losses"][0]
    assert r["embedding_error"] < 0.2 * r["initial_embedding_error"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="target must be a class"):
        apps.guided_sampling(target=7, n=4, iters=1)
    with pytest.raises(ValueError, match="tau must be > 0"):
        apps.audit(taus=(0.0,), n=4, iters=1)


def test_command_writes_json_and_figure(tmp_path):
    apps.main(["guided", "--out", str(tmp_path), "--iters", "3"])
    assert (tmp_path / "app_guided.json").exists() and (tmp_path / "app_guided.png").stat().st_size > 0


def test_morph_matches_both_identities_more_often_after_optimisation():
    r = apps.morph(n=32, iters=40)
    rows = {row["attack"]: row for row in r["rows"]}
    dim, ode = rows["DiM (no optimisation)"], rows["DiM + AdjointDEIS-1 (ODE)"]
    assert 0 < r["threshold"] < 1
    assert ode["mmpmr"] > dim["mmpmr"] and ode["nfe"] == 3 * 20 + 40 * (20 + 20)
    assert rows["DiM + AdjointDEIS-1 (SDE)"]["mmpmr"] > dim["mmpmr"]
