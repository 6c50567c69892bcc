"""CAS: label gating (true in training, predicted in eval), the attack objective includes the main CE,
placements, loading, channel analysis."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from robustprune.attacks import PGD
from robustprune.defenses import MethodContext, build_method
from robustprune.defenses.cas import CASLoss, CASModule, aux_logits, cas_labels, cas_modules, cas_total, install_cas
from robustprune.models import build_model

CTX = MethodContext(dataset="mnist", train_size=64, num_classes=10, adv_eps=0.3, adv_steps=2, adv_step_size=0.1)


def test_module_uses_true_label_row_in_training_and_prediction_in_eval() -> None:
    torch.manual_seed(0)
    cas = CASModule(6, 4)
    f = torch.rand(3, 6, 5, 5)
    y = torch.tensor([3, 0, 2])
    cas.train()
    cas.labels = y
    out = cas(f)
    assert torch.allclose(out, f * cas.fc.weight[y][:, :, None, None])
    cas.eval()
    out = cas(f)
    pred = cas.fc(f.mean(dim=(2, 3))).argmax(1)
    assert torch.equal(cas.last_rows, pred)
    assert torch.allclose(out, f * cas.fc.weight[pred][:, :, None, None])


def test_cas_labels_reach_every_module_in_training_and_are_cleared() -> None:
    model = install_cas(build_model("lenet5-caffe"), num_classes=10).train()
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([1, 7, 7, 0])
    with cas_labels(model, y):
        model(x)
    assert torch.equal(model.cas[0].last_rows, y)
    assert all(m.labels is None for m in cas_modules(model))
    model.eval()
    model(x)
    assert torch.equal(model.cas[0].last_rows, model.cas[0].last_logits.argmax(1))


@pytest.mark.parametrize(("name", "count", "shape"), [("lenet5-caffe", 1, (2, 1, 28, 28)),
                                                      ("resnet18", 2, (2, 3, 32, 32)),
                                                      ("vgg16", 3, (2, 3, 32, 32))])
def test_placements(name: str, count: int, shape: tuple[int, ...]) -> None:
    model = install_cas(build_model(name), num_classes=10).eval()
    model(torch.rand(shape))
    assert len(aux_logits(model)) == count and all(a.shape == (2, 10) for a in aux_logits(model))


def test_cas_changes_the_forward() -> None:
    torch.manual_seed(0)
    base = build_model("lenet5-caffe").eval()
    x = torch.rand(2, 1, 28, 28)
    ref = base(x)
    assert not torch.allclose(install_cas(base, num_classes=10)(x), ref)


def test_attack_objective_includes_main_ce() -> None:
    torch.manual_seed(0)
    model = install_cas(build_model("lenet5-caffe"), num_classes=10).eval()
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([1, 2, 3, 4])
    got = CASLoss(beta=2.0)(model, x, y)
    logits = model(x)
    aux = aux_logits(model)[0]
    want = F.cross_entropy(logits, y, reduction="none") + 2.0 * F.cross_entropy(aux, y, reduction="none")
    assert torch.allclose(got, want)
    assert torch.allclose(CASLoss(beta=0.0)(model, x, y), F.cross_entropy(logits, y, reduction="none"))
    assert torch.allclose(cas_total(logits, [], y, beta=2.0), F.cross_entropy(logits, y, reduction="none"))


def test_at_cas_training_attack_maximises_total_loss_and_loss_uses_true_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    method = build_method("at+cas", ctx=CTX)
    assert isinstance(method.attack.loss_fn, CASLoss) and method.attack.loss_fn.beta == 2.0
    model = method.prepare(build_model("lenet5-caffe")).train()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    seen: list[torch.Tensor] = []
    orig = CASModule.forward

    def spy(self: CASModule, f: torch.Tensor) -> torch.Tensor:
        out = orig(self, f)
        if self.training:
            seen.append(self.last_rows.clone())
        return out

    monkeypatch.setattr(CASModule, "forward", spy)
    losses, logs = method.loss(model, x, y)
    assert len(seen) == 2 and all(torch.equal(s, y) for s in seen)
    losses["weights"].backward()
    assert model.cas[0].fc.weight.grad is not None and model.cas[0].fc.weight.grad.abs().sum() > 0


def test_trades_cas_trains_a_step() -> None:
    method = build_method("trades+cas", ctx=CTX)
    model = method.prepare(build_model("lenet5-caffe")).train()
    losses, logs = method.loss(model, torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    assert torch.isfinite(losses["weights"]) and "kl" in logs


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="-1"):
        build_method("at+cas", ctx=CTX, beta=-1.0)
    with pytest.raises(ValueError, match="'Linear'"):
        install_cas(torch.nn.Linear(3, 3), num_classes=10)
    with pytest.raises(ValueError, match="0"):
        CASModule(0, 10)


def test_loaded_run_has_cas_and_channel_plot(tiny_mnist: Path, tmp_path: Path) -> None:
    from robustprune.config import TrainConfig
    from robustprune.defenses.cas import channel_magnitudes
    from robustprune.reports.cas_channels import plot_channels
    from robustprune.train import fit, load_run

    out = fit(TrainConfig(method="at+cas", model="lenet5-caffe", dataset="mnist", epochs=1, out=str(tmp_path / "r"),
                          data_dir=str(tiny_mnist), limit_train=32, batch_size=32, adv_steps=1, adv_step_size=0.3,
                          progress=False))
    run = load_run(out)
    assert len(cas_modules(run.model)) == 1
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    data = channel_magnitudes(run.model, x, y, attack=PGD(eps=0.3, steps=2, step_size=0.15))
    assert len(data["natural"]) == 500 and data["natural"] == sorted(data["natural"], reverse=True)
    png = plot_channels({"at+cas": data}, tmp_path / "ch.png")
    assert png.stat().st_size > 1000
    from robustprune.eval import evaluate_run

    card = evaluate_run(out, attacks=["pgd"], steps=2, limit=8, progress=False)
    assert [a["name"] for a in card["attacks"]] == ["pgd", "pgd[cas-total]"]
    assert card["attacks"][0]["params"]["loss"] == "cross_entropy_loss"
    assert card["attacks"][1]["params"]["loss"] == "cas_total(beta=2)"
    assert "final-logit cross-entropy" in card["attack_objective"]


def test_trades_cas_evaluation_objective_weights_the_auxiliary_ce_by_cr_beta(tiny_mnist: Path, tmp_path: Path) -> None:
    """The '[cas-total]' twin maximises the objective the model trained with: trades+cas weights its
    auxiliary CE by ``cr_beta`` (here 1.5), not by its TRADES ``beta`` (6)."""
    from robustprune.config import TrainConfig
    from robustprune.eval import evaluate_run
    from robustprune.train import fit

    out = fit(TrainConfig(method="trades+cas", model="lenet5-caffe", dataset="mnist", epochs=1,
                          out=str(tmp_path / "r"), data_dir=str(tiny_mnist), limit_train=32, batch_size=32,
                          adv_steps=1, adv_step_size=0.3, method_args={"beta": 6.0, "cr_beta": 1.5}, progress=False))
    card = evaluate_run(out, attacks=["pgd"], steps=2, limit=8, progress=False)
    assert [a["name"] for a in card["attacks"]] == ["pgd", "pgd[cas-total]"]
    assert card["attacks"][1]["params"]["loss"] == "cas_total(beta=1.5)"
