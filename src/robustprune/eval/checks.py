"""Gradient-masking checks of the robustness audit: each turns measured numbers into pass / warn.

The red flags of Athalye, Carlini & Wagner (ICML 2018) and Carlini et al. ("On evaluating
adversarial robustness", 2019), and AutoAttack's own self-checks:
randomness at test time without EOT, zero or non-finite input gradients, robust accuracy that is
not monotone in ε, an unbounded attack that does not reach ~0 %, a single-step attack beating a
multi-step one, black-box beating white-box, and AutoAttack falling far below PGD. Every check
returns a :class:`Check` whose ``evidence`` holds the numbers it judged, so a reader can disagree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from robustprune.models import model_mode

STATUSES = ("pass", "warn", "skip")
#: AutoAttack more than this many points below PGD (and more than two examples) is flagged as possible masking
AA_GAP = 3.0
#: an unbounded (ε = 1) attack must leave at most this robust accuracy (%), or one example
UNBOUNDED_MAX = 1.0


@dataclass
class Check:
    """One audit finding: ``status`` is ``"pass"``, ``"warn"`` or ``"skip"`` (not applicable)."""

    name: str
    status: str
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tolerance(n: int) -> float:
    """Accuracy differences below one example (or half a point, whichever is larger) are noise."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return max(0.5, 100.0 / n)


# ---- measurements -------------------------------------------------------------------------------


def determinism_stats(model: nn.Module, x: Tensor, *, passes: int = 5) -> dict[str, Any]:
    """Eval-mode logits of ``passes`` forward passes on ``x``: the largest difference between
    passes and how many examples change their prediction."""
    with model_mode(model), torch.no_grad():
        outs = [model(x) for _ in range(passes)]
    diff = max(float((o - outs[0]).abs().max()) for o in outs)
    preds = torch.stack([o.argmax(1) for o in outs])
    flips = int((preds != preds[0]).any(0).sum())
    return {"stochastic": diff > 0, "max_logit_diff": diff, "prediction_flips": flips, "passes": passes, "n": len(x)}


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """``z_y − max_{j≠y} z_j`` per example: the quantity every untargeted attack drives below 0."""
    return logits.gather(1, y[:, None]).squeeze(1) - logits.scatter(1, y[:, None], float("-inf")).amax(1)


def gradient_stats(model: nn.Module, loader: Any) -> dict[str, Any]:
    """Input gradients of the margin (logit-difference) loss at the clean points, in eval mode.

    The margin's gradient does not vanish when softmax saturates, so an exactly zero gradient means
    the input does not reach the logits differentiably (quantisation, a hard threshold...).
    Cross-entropy zeros are reported beside it (they also come from saturated softmax).
    """
    zero = nonfinite = ce_zero = n = 0
    norms = []
    with model_mode(model):
        for x, y in loader:
            xg = x.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                logits = model(xg)
                g, = torch.autograd.grad(margin(logits, y).sum(), xg, retain_graph=True)
                ce, = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, y, reduction="sum"), xg)
            flat = g.flatten(1)
            finite = torch.isfinite(flat).all(1)
            nonfinite += int((~finite).sum())
            zero += int((finite & (flat.abs().sum(1) == 0)).sum())
            ce_zero += int((ce.flatten(1).abs().sum(1) == 0).sum())
            norms.append(flat[finite].norm(dim=1))
            n += len(y)
    allnorms = torch.cat(norms) if norms else torch.zeros(0)
    median = float(allnorms.median()) if allnorms.numel() else None
    return {"n": n, "zero": zero, "nonfinite": nonfinite, "ce_zero": ce_zero, "median_l2": median}


# ---- checks -------------------------------------------------------------------------------------


def check_determinism(stats: dict[str, Any], *, eot_attacks: list[str]) -> Check:
    """Pass when the model is deterministic in eval mode, or random but attacked with EOT."""
    ev = dict(stats, eot_attacks=eot_attacks)
    if not stats["stochastic"]:
        return Check("deterministic", "pass", "eval-mode outputs are identical over repeated passes", ev)
    if eot_attacks:
        return Check("deterministic", "pass",
                     f"model is random in eval mode (max logit difference {stats['max_logit_diff']:.3g}); "
                     f"EOT attacks were run: {', '.join(eot_attacks)}", ev)
    return Check("deterministic", "warn", "model is random in eval mode but no EOT attack was run", ev)


def check_single_vs_eot(single: tuple[str, float] | None, eot: tuple[str, float] | None, *, stochastic: bool,
                        tol: float) -> Check:
    """For a model random in eval mode: warn when single-sample PGD leaves more than ``tol`` points
    above EOT-PGD, i.e. the randomness hides the gradient and a non-EOT number overstates robustness."""
    if not stochastic:
        return Check("single_sample_vs_eot", "skip", "the model is deterministic in eval mode", {})
    if single is None or eot is None:
        return Check("single_sample_vs_eot", "skip", "no single-sample/EOT pair of attacks in the ladder", {})
    (s_name, s_acc), (e_name, e_acc) = single, eot
    ev = {"single_sample": s_name, "single_acc": s_acc, "eot": e_name, "eot_acc": e_acc, "gap": s_acc - e_acc,
          "tolerance": tol}
    if s_acc <= e_acc + tol:
        return Check("single_sample_vs_eot", "pass", f"the model is random, but single-sample {s_name} "
                     f"({s_acc:.2f} %) is no weaker than {e_name} ({e_acc:.2f} %)", ev)
    return Check("single_sample_vs_eot", "warn",
                 f"the model is random in eval mode and single-sample {s_name} overstates its robustness by "
                 f"{s_acc - e_acc:.2f} points ({s_acc:.2f} % vs {e_name} {e_acc:.2f} %): report EOT attacks only", ev)


def check_gradients(stats: dict[str, Any]) -> Check:
    """Warn when any input gradient of the margin loss is exactly zero or not finite."""
    bad = stats["zero"] + stats["nonfinite"]
    if bad == 0:
        return Check("gradients", "pass", f"input gradients are non-zero and finite at all {stats['n']} points", stats)
    return Check("gradients", "warn",
                 f"{stats['zero']} of {stats['n']} points have a zero and {stats['nonfinite']} a non-finite input "
                 "gradient: gradient-based attacks cannot be trusted there (shattered / masked gradients)", stats)


def check_monotone(eps: list[float], acc: list[float], *, tol: float) -> Check:
    """Warn when robust accuracy rises with ε by more than ``tol`` points anywhere in the sweep."""
    if len(eps) != len(acc):
        raise ValueError(f"eps and acc differ in length: {len(eps)} != {len(acc)}")
    order = sorted(range(len(eps)), key=lambda i: eps[i])
    rises = []
    for a, b in zip(order, order[1:], strict=False):
        if acc[b] > acc[a] + tol:
            rises.append({"from_eps": eps[a], "to_eps": eps[b], "from_acc": acc[a], "to_acc": acc[b]})
    ev = {"eps": eps, "robust_acc": acc, "tolerance": tol, "rises": rises}
    if not rises:
        return Check("monotone_eps", "pass", "robust accuracy does not increase with ε", ev)
    r = rises[0]
    return Check("monotone_eps", "warn",
                 f"robust accuracy rises from {r['from_acc']:.2f} % at ε={r['from_eps']:.4g} to {r['to_acc']:.2f} % "
                 f"at ε={r['to_eps']:.4g}: the attack is failing at larger ε (masking or a bad step size)", ev)


def check_unbounded(acc: float, *, n: int, attack: str) -> Check:
    """Warn when an unbounded attack (ε = 1 covers all of [0, 1]) leaves more than ~1 % robust."""
    limit = max(UNBOUNDED_MAX, 100.0 / n)
    ev = {"robust_acc": acc, "limit": limit, "attack": attack}
    if acc <= limit:
        return Check("unbounded", "pass", f"the unbounded attack (ε = 1) reaches {acc:.2f} % accuracy", ev)
    return Check("unbounded", "warn",
                 f"an unbounded attack (ε = 1, which can reach any image) leaves {acc:.2f} % accuracy "
                 f"(> {limit:.2f} %): the attack is not using the gradient", ev)


def check_multistep(single: tuple[str, float], multi: tuple[str, float], *, tol: float) -> Check:
    """Warn when a multi-step attack is weaker than a single-step one by more than ``tol``."""
    (s_name, s_acc), (m_name, m_acc) = single, multi
    ev = {"single_step": s_name, "single_acc": s_acc, "multi_step": m_name, "multi_acc": m_acc, "tolerance": tol}
    if m_acc <= s_acc + tol:
        return Check("multistep_vs_single", "pass", f"{m_name} ({m_acc:.2f} %) is at least as strong as "
                     f"{s_name} ({s_acc:.2f} %)", ev)
    return Check("multistep_vs_single", "warn", f"{m_name} leaves {m_acc:.2f} % but single-step {s_name} only "
                 f"{s_acc:.2f} %: iterating makes the attack weaker, a sign of a masked loss surface", ev)


def check_blackbox(white: tuple[str, float], black: tuple[str, float] | None, *, tol: float) -> Check:
    """Warn when a black-box (transfer) attack beats the strongest white-box one."""
    if black is None:
        return Check("whitebox_vs_blackbox", "skip", "no transfer source given (--source RUN)", {})
    (w_name, w_acc), (b_name, b_acc) = white, black
    ev = {"white_box": w_name, "white_acc": w_acc, "black_box": b_name, "black_acc": b_acc, "tolerance": tol}
    if w_acc <= b_acc + tol:
        return Check("whitebox_vs_blackbox", "pass",
                     f"white-box {w_name} ({w_acc:.2f} %) is at least as strong as {b_name} ({b_acc:.2f} %)", ev)
    return Check("whitebox_vs_blackbox", "warn", f"black-box {b_name} leaves {b_acc:.2f} % but the best white-box "
                 f"attack {w_name} {w_acc:.2f} %: the model's own gradients mislead the attack", ev)


def check_autoattack(aa: dict[str, Any] | None, pgd: tuple[str, float], pgd_strong: tuple[str, float],
                     *, tol: float, reason: str = "") -> Check:
    """Warn when AutoAttack is more than 3 points below PGD (and more than two examples: ``2·tol``
    on small samples), when its Square stage (black-box) still finds points after the gradient
    stages, or when its own self-checks raised flags."""
    if aa is None:
        return Check("autoattack_vs_pgd", "skip", reason or "AutoAttack not run", {})
    (p_name, p_acc), (s_name, s_acc) = pgd, pgd_strong
    gap, gap_strong = p_acc - aa["robust_acc"], s_acc - aa["robust_acc"]
    stages = aa.get("stages", [])
    square = next((i for i, s in enumerate(stages) if s["name"] == "square"), None)
    square_gain = stages[square - 1]["robust_acc"] - stages[square]["robust_acc"] if square else 0.0  # never first
    max_gap = max(AA_GAP, 2 * tol)
    ev = {"autoattack_acc": aa["robust_acc"], p_name: p_acc, s_name: s_acc, "gap": gap, f"gap_{s_name}": gap_strong,
          "max_gap": max_gap, "square_gain": square_gain, "stages": stages, "flags": aa.get("flags", [])}
    problems = []
    if gap > max_gap:
        problems.append(_explain_gap(pgd, pgd_strong, aa["robust_acc"], stages, max_gap))
    if square_gain > tol:
        problems.append(f"the black-box Square stage removed {square_gain:.2f} points after the gradient stages")
    if aa.get("flags"):
        problems.append(f"AutoAttack's self-checks flagged: {'; '.join(aa['flags'])}")
    if problems:
        return Check("autoattack_vs_pgd", "warn", " | ".join(problems), ev)
    return Check("autoattack_vs_pgd", "pass", f"AutoAttack ({aa['robust_acc']:.2f} %) is within {max_gap:.3g} points "
                 f"of {p_name} ({p_acc:.2f} %; gap {gap:.2f})", ev)


def _explain_gap(pgd: tuple[str, float], strong: tuple[str, float], aa_acc: float, stages: list[dict[str, Any]],
                 max_gap: float) -> str:
    """Split a PGD → AutoAttack gap into what APGD-CE (same loss, adaptive step) and what the later
    stages (targeted DLR, FAB, Square) found, and say whether the strongest PGD closes it."""
    (p_name, p_acc), (s_name, s_acc) = pgd, strong
    text = (f"AutoAttack ({aa_acc:.2f} %) is {p_acc - aa_acc:.2f} points below {p_name} ({p_acc:.2f} %; "
            f"limit {max_gap:.3g})")
    ce = next((s["robust_acc"] for s in stages if s["name"] == "apgd-ce"), None)
    if ce is not None:
        text += (f": {p_acc - ce:.2f} points already fall to APGD-CE (the same cross-entropy loss with adaptive "
                 f"steps: {p_name} is under-converged) and {ce - aa_acc:.2f} to the later stages (targeted DLR / FAB "
                 "/ Square: the cross-entropy direction misleads)")
    left = s_acc - aa_acc
    verdict = "possible gradient masking" if left > max_gap else "mostly a too-weak PGD"
    return f"{text}; the strongest PGD ({s_name}, {s_acc:.2f} %) leaves a gap of {left:.2f} — {verdict}"
