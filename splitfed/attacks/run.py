"""``splitfed attack``: run the configured attacks against a victim and save what they recovered."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from splitfed.attacks.harness import DEFENSE_AWARE, AttackHarness, AttackSettings, load_victim_rows
from splitfed.attacks.suite import TrafficAttacks, victim_traffic
from splitfed.models import Partition, SplitModel, load_adapter, load_model, split_model
from splitfed.models.devices import resolve_device
from splitfed.models.placement import DTYPES
from splitfed.privacy import SplitDefense, load_cut, warm_up
from splitfed.training.replicate import replicate


def run_attack(settings: AttackSettings, console: Console | None = None) -> dict[str, Any]:
    """Load the public model, build the victim (public weights + its adapters if given), attack it."""
    console = console or Console(stderr=True)
    started = time.perf_counter()
    with console.status(f"loading {settings.model} ..."):
        model, tokenizer = load_model(settings.model, dtype=DTYPES[settings.dtype])
    model.to(resolve_device(settings.device))
    partition = Partition(settings.head, settings.tail)
    victim = split_model(replicate(model), partition)
    if settings.victim_adapters is not None:
        for part in victim.parts.values():
            directory = settings.victim_adapters / part.role
            if not directory.is_dir():
                raise FileNotFoundError(f"no {part.role} adapter in {settings.victim_adapters}")
            load_adapter(part, directory)
    rows = load_victim_rows(settings, tokenizer)
    with console.status("attacking ...") as status:
        harness = AttackHarness(model, tokenizer, partition, settings,
                                progress=lambda message: (status.update(message), console.log(message)))
        evaluation = harness.evaluate(victim, rows)
        if set(DEFENSE_AWARE) & set(settings.attacks):
            status.update("defense-aware attacks (private positions) ...")
            evaluation["private_positions"] = defense_aware(harness, victim, rows, settings)
    result = {
        "settings": json.loads(settings.model_dump_json()),
        **evaluation,
        "victim_rows": int(rows["input_ids"].shape[0]),
        "inverter_train_seconds": harness.train_seconds,
        "seconds": time.perf_counter() - started,
        "platform": {"python": platform.python_version(), "torch": torch.__version__,
                     "machine": platform.machine(), "threads": torch.get_num_threads()},
    }
    return result


def defense_aware(harness: AttackHarness, victim: SplitModel, rows: dict[str, torch.Tensor],
                  settings: AttackSettings) -> dict[str, Any]:
    """The victim's own traffic under its ``privacy`` block (its trained cut from
    ``victim_adapters/cut`` when there is one, else warmed up with a seed the attacker does not use),
    and every attack on it, scored on the rows' private positions."""
    hidden_size = int(harness.embeddings.shape[1])
    defense = None
    if settings.privacy.enabled:
        defense = SplitDefense(settings.privacy.model_copy(update={"seed": settings.privacy.seed or 1}),
                               planned_steps=1, hidden_size=hidden_size)
        if defense.cut is not None:
            trained = settings.victim_adapters is not None and load_cut(defense.cut,
                                                                        settings.victim_adapters / "cut")
            if not trained:
                warm_up(defense.cut, victim.head, victim.trunk, victim.tail, harness.public_ids,
                        harness.public_mask, seed=1)
    attacks = TrafficAttacks(harness, settings.privacy, seed=10_000 + settings.seed, planned_steps=1)
    return attacks.run(victim_traffic(victim.head, defense, rows, settings.average_times), victim.trunk, rows)


def attack_table(result: dict[str, Any]) -> Table:
    table = Table(title=f"attacks on head={result['settings']['head']} "
                        f"(forward sigma {result['forward']['sigma']:g}, clip {result['forward']['clip']})")
    for column in ("attack", "token accuracy", "ROUGE-L F1", "exact rows", "tokens"):
        table.add_column(column, justify="left" if column == "attack" else "right")
    for name, metrics in result["attacks"].items():
        table.add_row(name, f"{metrics['token_accuracy']:.3f}", f"{metrics['rouge_l']:.3f}",
                      f"{metrics['exact_sequence']:.3f}", str(metrics["tokens"]))
    for name, metrics in result.get("private_positions", {}).get("attacks", {}).items():
        table.add_row(f"{name} (private positions)", f"{metrics['token_accuracy']:.3f}",
                      f"{metrics['rouge_l']:.3f}", f"{metrics['exact_sequence']:.3f}", str(metrics["tokens"]))
    return table


def save_attack(result: dict[str, Any], output: Path) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    path = output / "attack.json"
    path.write_text(json.dumps(result, indent=2))
    lines = ["| attack | token accuracy | ROUGE-L F1 | exact rows |", "|---|---|---|---|"]
    lines += [f"| {name} | {m['token_accuracy']:.3f} | {m['rouge_l']:.3f} | {m['exact_sequence']:.3f} |"
              for name, m in result["attacks"].items()]
    lines += [f"| {name} (private positions) | {m['token_accuracy']:.3f} | {m['rouge_l']:.3f} | "
              f"{m['exact_sequence']:.3f} |"
              for name, m in result.get("private_positions", {}).get("attacks", {}).items()]
    (output / "attack.md").write_text("\n".join(lines) + "\n")
    return path
