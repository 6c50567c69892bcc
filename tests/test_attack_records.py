"""What an attack writes about itself: its parameters on a card, its repr in a log, AutoAttack's
per-stage counts that evaluation shards sum, and the registry's builders. A card that names the
wrong attack, or shards whose sum is not the whole set's, reports a number no one ran."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustprune.attacks import (
    FMN,
    PGD,
    AutoAttack,
    CarliniWagnerL2,
    DeepFool,
    TransferAttack,
    build_attack,
    build_minnorm,
)
from robustprune.attacks.autoattack import package_version


def test_attack_repr_lists_its_params_without_the_name() -> None:
    attack = PGD(eps=0.3, steps=7, step_size=0.01)
    text = repr(attack)
    assert text.startswith("PGD(") and text.endswith(")")
    params = attack.params()
    assert params["name"] == "pgd"
    for key, value in params.items():
        if key != "name":
            assert f"{key}={value!r}" in text
    assert "name=" not in text
    assert ", " in text  # the items are separated as in a call


def test_minnorm_repr_lists_its_params_without_the_name() -> None:
    attack = FMN(norm="l1", steps=12)
    text = repr(attack)
    assert text.startswith("FMN(") and text.endswith(")")
    assert "norm='l1'" in text and "steps=12" in text and "eval_mode=True" in text
    assert "name=" not in text and ", " in text


def test_build_minnorm_builds_each_registered_attack_with_its_arguments() -> None:
    deepfool = build_minnorm("deepfool", steps=5)
    assert isinstance(deepfool, DeepFool) and deepfool.params()["steps"] == 5
    assert isinstance(build_minnorm("cw"), CarliniWagnerL2)
    fmn = build_minnorm("fmn", norm="l2")
    assert isinstance(fmn, FMN) and fmn.norm == "l2"
    with pytest.raises(ValueError, match="no-such-attack"):
        build_minnorm("no-such-attack")
    assert isinstance(build_attack("pgd", eps=0.1), PGD)


def test_minimum_norm_attacks_put_every_setting_on_the_card() -> None:
    cw = CarliniWagnerL2(steps=11, lr=0.5, binary_search_steps=3, initial_const=0.25, kappa=0.5, abort_early=False)
    assert cw.params() == {"name": "cw-l2", "norm": "l2", "eval_mode": True, "steps": 11, "lr": 0.5,
                           "binary_search_steps": 3, "initial_const": 0.25, "kappa": 0.5, "abort_early": False}
    df = DeepFool(steps=9, overshoot=0.5, candidates=4, eval_mode=False)
    assert df.params() == {"name": "deepfool", "norm": "l2", "eval_mode": False, "steps": 9, "overshoot": 0.5,
                           "candidates": 4}


def test_transfer_attack_names_its_inner_attack_and_refuses_wrong_arguments() -> None:
    inner = PGD(eps=0.2, steps=3, step_size=0.1, norm="l2", eval_mode=False)
    attack = TransferAttack(source=nn.Linear(2, 2), attack=inner)
    p = attack.params()
    assert p["name"] == "transfer-pgd" and p["inner"] == "pgd" and p["transfer"] is True
    assert p["steps"] == 3 and p["eps"] == 0.2 and p["norm"] == "l2"
    # the transfer attack takes its threat model from the inner attack, not from the defaults
    assert (attack.eps, attack.norm, attack.eval_mode) == (0.2, "l2", False)
    assert TransferAttack(source=nn.Linear(2, 2), attack=PGD(eps=0.1)).eval_mode is True
    with pytest.raises(ValueError, match="source must be an nn.Module, got str"):
        TransferAttack(source="model", attack=inner)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="attack must be an Attack, got int"):
        TransferAttack(source=nn.Linear(2, 2), attack=3)  # type: ignore[arg-type]


def test_autoattack_params_name_the_version_budget_and_package() -> None:
    p = AutoAttack(eps=0.3, version="standard", seed=4).params()
    assert p["name"] == "autoattack" and p["version"] == "standard" and p["seed"] == 4
    assert p["eot"] == 1 and p["n_iter"] == 100 and p["n_queries"] == 5000
    assert p["package"] == f"pyautoattack {package_version()}" and package_version() != "not installed"
    p = AutoAttack(eps=0.3, version="rand", n_iter=7, n_queries=11).params()
    assert p["eot"] == 20 and p["n_iter"] == 7 and p["n_queries"] == 11
    assert AutoAttack(eps=0.3, version="auto").params()["eot"] == 20


def shard_tallies(n: int, clean: int, robust: dict[str, int], seconds: dict[str, float],
                  versions: list[str], flags: list[str]) -> dict[str, object]:
    return {"n": n, "clean": clean, "robust": robust, "seconds": seconds, "versions": versions, "flags": flags}


def test_autoattack_tallies_sum_exactly_over_shards() -> None:
    whole = AutoAttack(eps=0.3)
    assert whole.tallies() == {"n": 0, "clean": 0, "robust": {}, "seconds": {}, "versions": [], "flags": []}
    empty = whole.breakdown()
    assert empty["n"] == 0 and empty["clean_acc"] == 0.0 and empty["stages"] == []
    whole.add_tallies(shard_tallies(10, 9, {"apgd-ce": 6, "apgd-t": 5}, {"apgd-ce": 1.5, "apgd-t": 2.0},
                                    ["standard"], ["warn a"]))
    whole.add_tallies(shard_tallies(6, 3, {"apgd-ce": 2, "apgd-t": 1}, {"apgd-ce": 0.25},
                                    ["rand"], ["warn a", "warn b"]))
    t = whole.tallies()
    assert t == {"n": 16, "clean": 12, "robust": {"apgd-ce": 8, "apgd-t": 6},
                 "seconds": {"apgd-ce": 1.75, "apgd-t": 2.0}, "versions": ["rand", "standard"],
                 "flags": ["warn a", "warn b"]}
    b = whole.breakdown()
    assert b["n"] == 16 and b["clean_acc"] == pytest.approx(75.0)
    assert b["stages"] == [{"name": "apgd-ce", "robust_acc": pytest.approx(50.0), "wall_s": 1.75},
                           {"name": "apgd-t", "robust_acc": pytest.approx(37.5), "wall_s": 2.0}]
    assert b["versions"] == ["rand", "standard"] and b["flags"] == ["warn a", "warn b"]
    # the tallies are a copy: a caller changing them does not change the attack's counts
    t["robust"]["apgd-ce"] = 0
    t["flags"].append("x")
    assert whole.tallies()["robust"]["apgd-ce"] == 8 and whole.tallies()["flags"] == ["warn a", "warn b"]
    # one attack's tallies added to a fresh one reproduce it
    again = AutoAttack(eps=0.3)
    again.add_tallies(whole.tallies())
    assert again.tallies() == whole.tallies() and again.breakdown() == whole.breakdown()
    whole.reset()
    assert whole.tallies()["n"] == 0 and whole.tallies()["robust"] == {}


@pytest.mark.parametrize("n_iter", [1, 7, 20, 50, 100, 333])
def test_apgd_iterations_are_set_as_the_package_derives_them(n_iter: int) -> None:
    """``n_iter`` below the package's 100 must also move APGD's checkpoint schedule, exactly as the
    package's constructor derives it from ``n_iter``."""
    from pyautoattack.autopgd_base import APGDAttack

    from robustprune.attacks.autoattack import _set_apgd_iterations

    def predict(x: torch.Tensor) -> torch.Tensor:
        return x

    ours = APGDAttack(predict, n_iter=100, eps=0.1, device="cpu")
    _set_apgd_iterations(ours, n_iter)
    theirs = APGDAttack(predict, n_iter=n_iter, eps=0.1, device="cpu")
    for key in ("n_iter", "n_iter_orig", "n_iter_2", "n_iter_min", "size_decr"):
        assert getattr(ours, key) == getattr(theirs, key), key


def test_fmn_card_names_every_setting() -> None:
    fmn = FMN(norm="l1", steps=12, step_size=0.5, min_step_size=0.01, gamma=0.2, min_gamma=0.02, targets=3)
    assert fmn.params() == {"name": "fmn", "norm": "l1", "eval_mode": True, "steps": 12, "step_size": 0.5,
                            "min_step_size": 0.01, "gamma": 0.2, "min_gamma": 0.02, "targets": 3}


def test_an_unnamed_minimum_norm_attack_is_named_after_its_class() -> None:
    from robustprune.attacks import MinNormAttack

    class MyAttack(MinNormAttack):
        def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x

    assert MyAttack(eval_mode=False).params() == {"name": "myattack", "norm": "l2", "eval_mode": False}


def test_a_missing_package_is_named_on_the_card_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    import robustprune.attacks.autoattack as aa_mod

    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(aa_mod.metadata, "version", missing)
    assert aa_mod.package_version() == "not installed"
    assert AutoAttack(eps=0.3).params()["package"] == "pyautoattack not installed"


def four_classes() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 4)).eval()


@pytest.mark.parametrize(("version", "norm", "eot"), [("standard", "linf", 1), ("rand", "l2", 20)])
def test_autoattack_builds_the_package_attack_it_says_on_the_card(version: str, norm: str, eot: int) -> None:
    from robustprune.attacks.autoattack import _Collect

    attack = AutoAttack(eps=0.5, norm=norm, version=version, seed=7, n_iter=12, n_queries=34)
    x, y = torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 2])
    aa = attack._build(four_classes(), x, y, version, _Collect())
    assert aa.version == version and aa.seed == 7 and aa.norm == {"linf": "Linf", "l2": "L2"}[norm]
    assert aa.epsilon == 0.5 and str(aa.device) == "cpu"
    assert aa.apgd.eot_iter == eot == attack.params()["eot"]
    assert aa.apgd_targeted.n_target_classes == 3 and aa.fab.n_target_classes == 3  # 4 classes: 3 others
    assert aa.apgd.n_iter == aa.apgd_targeted.n_iter == aa.fab.n_iter == 12 and aa.square.n_queries == 34
    assert aa.apgd.size_decr == 1 and aa.apgd.n_iter_2 == 2  # the schedule follows the iterations
    assert aa.logger is aa.apgd.logger and aa.logger.name == "robustprune.attacks.autoattack.package"
    plain = AutoAttack(eps=0.5, version=version)._build(four_classes(), x, y, version, _Collect())
    assert plain.apgd.n_iter == 100 and plain.square.n_queries == 5000  # the package's own budget


def test_autoattack_keeps_its_threat_model_and_names_bad_budgets() -> None:
    a = AutoAttack(eps=0.5, norm="l2", eval_mode=False)
    assert (a.norm, a.eval_mode, a.seed, a.version) == ("l2", False, 0, "auto")
    for key in ("n_iter", "n_queries"):
        with pytest.raises(ValueError, match=f"^{key} must be"):
            AutoAttack(eps=0.3, **{key: 0})


def test_fmn_cosine_schedule_runs_from_start_to_end() -> None:
    from robustprune.attacks.fmn import _cosine

    assert _cosine(1.0, 0.1, 0, 10) == pytest.approx(1.0)
    assert _cosine(1.0, 0.1, 10, 10) == pytest.approx(0.1)
    assert _cosine(1.0, 0.1, 5, 10) == pytest.approx(0.55)
    assert _cosine(2.0, 0.0, 3, 12) == pytest.approx(1 + 2 ** -0.5)  # cos(pi/4)


def test_fmn_tries_each_of_the_top_other_classes_once() -> None:
    seen: list[object] = []
    original = FMN._run

    def spy(self: FMN, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
            target: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(None if target is None else target.tolist())
        return original(self, model, x, y, target)

    model = four_classes()
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    order = logits.scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)[:, :3]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FMN, "_run", spy)
        FMN(steps=3, targets=9)(model, x, y)  # more targets than other classes: all three
        assert seen == [order[:, j].tolist() for j in range(3)]
        seen.clear()
        FMN(steps=3, targets=2)(model, x, y)
        assert seen == [order[:, j].tolist() for j in range(2)]
    binary = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    res = FMN(steps=5, targets=1)(binary, x, binary(x).argmax(1))  # one other class is enough
    assert len(res.norms) == 2
    one = nn.Sequential(nn.Flatten(), nn.Linear(16, 1)).eval()
    with pytest.raises(ValueError, match="FMN needs a model with >= 2 classes, got 1"):
        FMN(steps=2, targets=1)(one, x, torch.zeros(2, dtype=torch.long))


def test_pgd_restarts_run_again_on_every_point_still_robust() -> None:
    """R restarts = the first run and R − 1 more on the points not yet fooled, down to a single one."""
    calls: list[int] = []
    original = PGD._run

    def spy(self: PGD, model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kw: object) -> torch.Tensor:
        calls.append(len(x))
        return original(self, model, x, y, **kw)  # type: ignore[arg-type]

    model = four_classes()
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1).detach()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PGD, "_run", spy)
        PGD(eps=1e-4, steps=2, restarts=4)(model, x, y)  # too small to fool anyone: every run sees all 3
        assert calls == [3, 3, 3, 3]
        calls.clear()
        PGD(eps=1e-4, steps=2, restarts=3)(model, x[:1], y[:1])  # a single robust point is restarted too
        assert calls == [1, 1, 1]


def test_fmn_defaults_and_errors_name_the_argument() -> None:
    assert FMN().params() == {"name": "fmn", "norm": "linf", "eval_mode": True, "steps": 100, "step_size": 1.0,
                              "min_step_size": 0.01, "gamma": 0.05, "min_gamma": 0.001, "targets": None}
    assert FMN(step_size=2.0).min_step_size == pytest.approx(0.02)  # step_size / 100 unless given
    assert FMN(step_size=2.0, min_step_size=0.5).min_step_size == 0.5
    for key, bad in (("steps", 0), ("step_size", 0.0), ("min_step_size", -1.0), ("gamma", 0.0), ("min_gamma", 0.0),
                     ("targets", 0)):
        with pytest.raises(ValueError, match=f"^{key} must be"):
            FMN(**{key: bad})
    for gamma, min_gamma in ((1.0, 0.001), (0.05, 1.0), (0.05, 1.5)):
        with pytest.raises(ValueError, match="gamma and min_gamma must be < 1"):
            FMN(gamma=gamma, min_gamma=min_gamma)


def test_fmn_checks_every_iterate_once() -> None:
    """steps + 1 iterates per pass (the start and one after each step), each judged by one forward
    pass; the base adds its clean check before and its success check after."""

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.calls = four_classes(), 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self.inner(x)

    model = Counting()
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    y = model.inner(x).argmax(1).detach()
    for steps in (1, 4, 9):
        model.calls = 0
        FMN(steps=steps).perturb(model, x, y)
        assert model.calls == steps + 1, steps


def test_reprs_separate_their_items_with_a_comma_and_a_space() -> None:
    attack = PGD(eps=0.3, steps=7, step_size=0.01)
    inner = repr(attack)[len("PGD("):-1]
    assert inner.split(", ") == [f"{k}={v!r}" for k, v in attack.params().items() if k != "name"]


def test_fgsm_keeps_its_norm() -> None:
    from robustprune.attacks import FGSM

    assert FGSM(eps=0.5, norm="l2").norm == "l2" and FGSM(eps=0.5, norm="l2").params()["norm"] == "l2"


def test_l2_projection_leaves_points_inside_the_ball_alone() -> None:
    from robustprune.attacks.fmn import project_lp_ball

    delta = torch.tensor([[0.3, 0.4], [3.0, 4.0]])  # L2 norms 0.5 and 5
    out = project_lp_ball(delta, torch.tensor([1.0, 1.0]), "l2")
    torch.testing.assert_close(out, torch.tensor([[0.3, 0.4], [0.6, 0.8]]))


def test_deepfool_steps_stay_in_the_pixel_box() -> None:
    """A boundary that lies only beyond the box (below 0): DeepFool's steps are clipped to [0, 1]
    and it fails there rather than returning an image with negative pixels."""
    from robust_toys import linear_model
    from robustprune.attacks import DeepFool

    w = torch.stack([torch.zeros(4, dtype=torch.float64), -torch.ones(4, dtype=torch.float64)])
    model = linear_model(w, torch.tensor([0.0, -0.1], dtype=torch.float64))  # class 1 needs sum(x) < -0.1
    x = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    res = DeepFool(steps=5)(model, x, torch.zeros(2, dtype=torch.long))
    assert res.x_adv.min() >= 0 and not res.success.any()
