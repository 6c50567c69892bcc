"""The short markdown report of ``robustprune audit``, rendered from its JSON card only."""

from __future__ import annotations

from typing import Any

from robustprune.reports.audit_plots import security_label

STATUS = {"pass": "PASS", "warn": "**WARN**", "skip": "skip"}


def _params(p: dict[str, Any]) -> str:
    keep = ("eps", "steps", "step_size", "restarts", "eot", "version", "n_iter", "n_queries", "inner")
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items() if k in keep)


def _evidence(ev: dict[str, Any]) -> str:
    parts = []
    for k, v in ev.items():
        if isinstance(v, float):
            parts.append(f"{k}={v:.4g}")
        elif isinstance(v, list) and len(v) > 8:
            parts.append(f"{k}=[{len(v)} items]")
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            parts.append(f"{k}=" + "; ".join(", ".join(f"{a}={b:.4g}" if isinstance(b, float) else f"{a}={b}"
                                                       for a, b in d.items()) for d in v))
        else:
            parts.append(f"{k}={v}")
    return ", ".join(parts)


def _ladder(card: dict[str, Any]) -> list[str]:
    lines = ["| attack | parameters | robust accuracy % | time s |", "|---|---|---|---|",
             f"| clean | - | {card['clean_acc']:.2f} | - |"]
    for e in card["ladder"]:
        lines.append(f"| {e['name']} | {_params(e['params'])} | {e['robust_acc']:.2f} | {e['wall_s']:.1f} |")
    for e in card["ladder"]:
        if "breakdown" in e:
            b = e["breakdown"]
            stages = " → ".join(f"{s['name']} {s['robust_acc']:.2f}" for s in b["stages"])
            lines += ["", f"AutoAttack ({', '.join(b['versions'])}), robust accuracy after each stage: "
                          f"clean {b['clean_acc']:.2f} → {stages}"]
    return lines


def _security(sec: dict[str, Any] | None) -> list[str]:
    """The security-curve row under the ε table and a line on its distances (or why it was skipped)."""
    if not sec:
        return []
    if "points" not in sec:
        return ["", f"Security curve skipped: {sec.get('skipped', '-')}."]
    pts = sec["points"]
    median = "-" if sec["median"] is None else f"{sec['median']:.4g}"
    return ["| FMN security % | " + " | ".join(f"{p['robust_acc']:.2f}" for p in pts) + " |", "",
            f"Security curve: {security_label(sec)}; % of points classified correctly whose minimal "
            f"distance exceeds ε; median distance over correct points {median}; no adversarial example "
            f"found for {sec['n_failed']} of them (counted as robust); {sec['wall_s']:.0f} s."]


def render_audit_markdown(card: dict[str, Any], *, surface: bool = True) -> str:
    """Markdown: header, verdict, attack ladder, checks with evidence, ε curve and plot, loss surface.

    >>> print(render_audit_markdown(json.load(open("audit/audit.json"))))    # doctest: +SKIP
    """
    head = " / ".join(str(card.get(k, "?")) for k in ("method", "model", "dataset"))
    if card.get("test_time"):
        head += f" + {card['test_time']['label']}"
    n_warn = len(card.get("warned", []))
    verdict = (f"**WARN** — {n_warn} of {len(card['checks'])} checks warn: {', '.join(card['warned'])}"
               if n_warn else f"PASS — no check warns ({len(card['checks'])} checks)")
    lines = [
        f"# Robustness audit: {head}", "",
        f"run `{card.get('run', '-')}`; {card['n']} test points; L∞ ε = {card['eps']:g}, PGD step "
        f"{card['step_size']:g}; seed {card['seed']}; {card.get('device_name', card.get('device', '?'))}; "
        f"{card['wall_s']:.0f} s.",
        f"Model {'is random in eval mode (accuracies averaged over passes; EOT attacks added)' if card['stochastic'] else 'is deterministic in eval mode'}.",  # noqa: E501
        "", f"Verdict: {verdict}", "", "## Attack ladder", "", *_ladder(card), "", "## Checks", "",
        "| check | status | finding |", "|---|---|---|",
    ]
    for c in card["checks"]:
        lines.append(f"| {c['name']} | {STATUS[c['status']]} | {c['summary']} |")
    lines += ["", "Evidence:", ""]
    lines += [f"- `{c['name']}`: {_evidence(c['evidence']) or '-'}" for c in card["checks"]]
    curve = card["curve"]
    atk = curve["attack"]
    lines += ["", "## Robust accuracy vs ε", "",
              f"PGD-{atk['steps']}, step 2.5·ε/{atk['steps']}, random start, EOT-{atk['eot']}; "
              f"unbounded ε = 1: {card['unbounded']['points'][0]['robust_acc']:.2f} %.", "",
              "| ε | " + " | ".join(f"{p['eps']:g}" for p in curve["points"]) + " |",
              "|---|" + "---|" * len(curve["points"]),
              "| robust % | " + " | ".join(f"{p['robust_acc']:.2f}" for p in curve["points"]) + " |"]
    lines += _security(card.get("security"))
    lines += ["", "![robust accuracy vs eps](curve.png)"]
    if surface:
        lines += ["", "## Loss surface", "",
                  "Cross-entropy around correctly classified test points along the FGSM direction and a random "
                  "direction (surface.json).", "", "![loss surface](surface.png)"]
    return "\n".join(lines) + "\n"
