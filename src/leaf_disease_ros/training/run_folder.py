"""
A training run folder under the shared output rule: never over another run, never in the data.

``leaf-disease-train --out RUN`` writes checkpoints, the split, the log and the plots
into RUN. :func:`check_run_folder` (called by the command before PyTorch is
imported, and again by :func:`claim_run_folder`) refuses a RUN that:

- is, holds or lies inside an input (the dataset, ``--base-data``, ``--weights``,
  ``--init-from`` and its card): checkpoints and plots never go into the data, where
  a later run would read them as images or classes;
- holds anything but an earlier run of ``leaf-disease-train``;
- holds an earlier run and ``--resume`` is not given: its checkpoints are never
  silently replaced (resume it, or give a new name).

:func:`claim_run_folder` creates RUN and marks it with the manifest of
:mod:`leaf_disease_ros.perception.output_paths`; :func:`mark_run_folder` lists the
run's files in it when the run is done. A run folder of an earlier version (no
manifest) can still be resumed when it holds ``checkpoint_last.pt``. Imports no
PyTorch.
"""

import argparse
import os
from typing import List

from leaf_disease_ros.perception.model_card import card_path_for_model
from leaf_disease_ros.perception.output_paths import (check_apart_from_inputs,
                                                      check_output_folder, read_manifest,
                                                      write_manifest)

TRAIN_COMMAND = 'leaf-disease-train'
LAST_CHECKPOINT = 'checkpoint_last.pt'


def run_inputs(args: argparse.Namespace) -> List[str]:
    """Return every file and folder a training run reads."""
    inputs = [args.data]
    for name in ('base_data', 'weights', 'init_from'):
        value = getattr(args, name, None)
        if value:
            inputs.append(value)
    if getattr(args, 'init_from', None):
        inputs.append(card_path_for_model(args.init_from))
    return inputs


def check_run_folder(args: argparse.Namespace) -> None:
    """
    Refuse ``args.out`` when it would destroy an input or an earlier run (module docstring).

    :raises OutputError: naming the conflict and what to do instead.
    """
    resume = bool(getattr(args, 'resume', False))
    if resume and os.path.isdir(args.out) and read_manifest(args.out) is None and \
            os.path.isfile(os.path.join(args.out, LAST_CHECKPOINT)):
        check_apart_from_inputs(args.out, run_inputs(args), '--out', folder=True)
        return  # a run of an earlier version: resumed, then marked
    if getattr(args, 'init_from', None):
        hint = 'give a new --out (fine-tuning cannot be resumed; it is short)'
    else:
        hint = ('pass --resume to continue it, or give a new --out; its checkpoints are '
                'never replaced silently')
    check_output_folder(args.out, run_inputs(args), what='--out', command=TRAIN_COMMAND,
                        allow_rerun=resume, rerun_hint=hint, replaces_folder=False)


def claim_run_folder(args: argparse.Namespace) -> None:
    """
    Check ``args.out`` (:func:`check_run_folder`), create it and mark it as a run.

    :raises OutputError: the folder is refused.
    """
    check_run_folder(args)
    os.makedirs(args.out, exist_ok=True)
    if read_manifest(args.out) is None:
        write_manifest(args.out, TRAIN_COMMAND, files=[])


def mark_run_folder(out_dir: str) -> None:
    """List every file of the finished run in its manifest."""
    write_manifest(out_dir, TRAIN_COMMAND)
