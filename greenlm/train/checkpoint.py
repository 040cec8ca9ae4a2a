"""The training run directory: what a killed run needs to continue exactly where its last checkpoint left it.

    run.json                  what this run is (teacher, student, text, settings) and its fingerprint
    student/                  the student's config, so a resumed run rebuilds it without re-applying a recipe
    data.safetensors          the token windows (text, and text the teacher generated), written once
    teacher-topk.safetensors  the cached teacher top-k, when the run uses one
    energy.jsonl              one line per optimizer step and checkpoint, from every session: the energy of
                              steps lost to a kill still counts in the run's total
    step-000120/              a checkpoint: student weights, optimizer and RNG state, progress
    latest                    the name of the newest complete checkpoint

A checkpoint is written under a temporary name and renamed, then `latest` is replaced atomically, so a kill
at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from greenlm.errors import GreenlmError

RUN_FORMAT = "greenlm-train-run/1"
RUN_FILE = "run.json"
LATEST_FILE = "latest"
ENERGY_LOG = "energy.jsonl"
STUDENT_DIR = "student"
DATA_FILE = "data.safetensors"
TOPK_FILE = "teacher-topk.safetensors"


def fingerprint(identity: dict[str, Any]) -> str:
    """A short hash of everything that defines a run: a checkpoint only continues the run it came from."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [
        k
        for k in keys
        if json.dumps(old.get(k), sort_keys=True, default=str)
        != json.dumps(new.get(k), sort_keys=True, default=str)
    ]


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _save_tensors_atomic(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


@dataclass
class RunDir:
    path: Path

    # --- creating and reopening ---------------------------------------------------------------------------

    @staticmethod
    def check_new(path: str | Path) -> Path:
        """Refuse a directory that already holds something: a fresh run must not overwrite another's state."""
        p = Path(path).expanduser()
        if p.exists() and (not p.is_dir() or any(p.iterdir())):
            raise GreenlmError(
                f"checkpoint directory {p} already exists: pass --resume to continue that run, "
                "or remove it (or choose another --checkpoint-dir) to start afresh"
            )
        return p

    @classmethod
    def create(cls, path: str | Path, identity: dict, info: dict) -> RunDir:
        p = cls.check_new(path)
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GreenlmError(f"cannot create checkpoint directory {p}: {exc.strerror or exc}") from None
        run = cls(p)
        _write_json(
            p / RUN_FILE,
            {"format": RUN_FORMAT, "fingerprint": fingerprint(identity), "identity": identity, **info},
        )
        return run

    @classmethod
    def open_existing(cls, path: str | Path, identity: dict) -> RunDir:
        """The run directory of an interrupted run with the same identity, holding at least one checkpoint."""
        p = Path(path).expanduser()
        run_file = p / RUN_FILE
        if not run_file.is_file():
            raise GreenlmError(
                f"--resume: no checkpoint in {p} (no {RUN_FILE}): start without --resume, "
                "or point --checkpoint-dir at the interrupted run's directory"
            )
        try:
            stored = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise GreenlmError(
                f"--resume: {run_file} is unreadable ({exc}): the checkpoint is corrupt"
            ) from None
        if stored.get("format") != RUN_FORMAT or not isinstance(stored.get("identity"), dict):
            raise GreenlmError(f"--resume: {run_file} is not a greenlm training run ({RUN_FORMAT})")
        if stored.get("fingerprint") != fingerprint(identity):
            diff = _differences(stored["identity"], identity)
            raise GreenlmError(
                f"--resume: the checkpoint in {p} belongs to another run (it differs in "
                f"{', '.join(diff[:6]) or 'its identity'}): resume with the same teacher, student, text and "
                "settings, or use another --checkpoint-dir"
            )
        run = cls(p)
        if run.latest() is None:
            raise GreenlmError(
                f"--resume: {p} holds no complete checkpoint yet (the run stopped before its first): "
                "remove the directory and start without --resume"
            )
        return run

    def info(self) -> dict:
        return json.loads((self.path / RUN_FILE).read_text(encoding="utf-8"))

    def update_info(self, **fields) -> None:
        _write_json(self.path / RUN_FILE, {**self.info(), **fields})

    # --- files written once ---------------------------------------------------------------------------------

    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        _save_tensors_atomic(self.path / name, tensors)

    def load_tensors(self, name: str) -> dict[str, torch.Tensor] | None:
        file = self.path / name
        return load_file(str(file)) if file.is_file() else None

    def save_student_config(self, model) -> None:
        target = self.path / STUDENT_DIR
        tmp = Path(tempfile.mkdtemp(prefix=".student.", dir=self.path))
        model.config.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)

    def student_config_dir(self) -> Path:
        return self.path / STUDENT_DIR

    # --- checkpoints ----------------------------------------------------------------------------------------

    def latest(self) -> Path | None:
        pointer = self.path / LATEST_FILE
        if not pointer.is_file():
            return None
        target = self.path / pointer.read_text(encoding="utf-8").strip()
        return target if (target / "state.json").is_file() else None

    def save_checkpoint(self, step: int, model, optimizer, state: dict) -> Path:
        name = f"step-{step:06d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=self.path))
        try:
            save_model(model, str(tmp / "student.safetensors"))
            torch.save(
                {
                    "optimizer": optimizer.state_dict(),
                    "rng_cpu": torch.get_rng_state(),
                    "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                },
                tmp / "trainer.pt",
            )
            _write_json(tmp / "state.json", state)
            target = self.path / name
            if target.exists():
                shutil.rmtree(target)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        pointer = self.path / (LATEST_FILE + ".tmp")
        pointer.write_text(name + "\n", encoding="utf-8")
        os.replace(pointer, self.path / LATEST_FILE)
        for old in self.path.glob("step-*"):  # only the newest checkpoint is kept
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        return target

    def load_checkpoint(self, model, optimizer) -> dict:
        latest = self.latest()
        if latest is None:
            raise GreenlmError(f"--resume: {self.path} holds no complete checkpoint")
        load_model(model, str(latest / "student.safetensors"), strict=True)
        trainer = torch.load(latest / "trainer.pt", weights_only=True)
        optimizer.load_state_dict(trainer["optimizer"])
        torch.set_rng_state(trainer["rng_cpu"])
        if trainer["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(trainer["rng_cuda"])
        return json.loads((latest / "state.json").read_text(encoding="utf-8"))

    # --- the energy log -------------------------------------------------------------------------------------

    def append_energy(self, line: dict) -> None:
        with (self.path / ENERGY_LOG).open("a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()

    def energy_lines(self) -> list[dict]:
        file = self.path / ENERGY_LOG
        if not file.is_file():
            return []
        lines = []
        for raw in file.read_text(encoding="utf-8").splitlines():
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                continue  # a line torn by a kill mid-write
        return lines

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
