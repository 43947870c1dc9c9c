#!/usr/bin/env python3
"""
Print the parameter documentation generated from the parameter table.

    python3 tools/gen_param_docs.py            # the markdown table of docs/parameters.md
    python3 tools/gen_param_docs.py --yaml     # a config/detector.yaml with every default

The one source is ``leaf_disease_ros.perception.config.PARAMETERS``; ``test/test_param_docs.py``
fails when ``docs/parameters.md`` or ``config/detector.yaml`` drifts from it. Run it from the
repository root (it adds ``src`` to the import path).
"""

import argparse
import os
import sys
from typing import Any, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'src'))

from leaf_disease_ros.perception.config import PARAMETERS, ParamSpec  # noqa: E402
from leaf_disease_ros.ros.params import ros_default  # noqa: E402

BEGIN_MARKER = '<!-- BEGIN GENERATED PARAMETER TABLE (tools/gen_param_docs.py) -->'
END_MARKER = '<!-- END GENERATED PARAMETER TABLE -->'


def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, str):
        return "''" if value == '' else f"'{value}'"
    if isinstance(value, list):
        return '[' + ', '.join(_yaml_value(v) for v in value) + ']'
    return repr(value)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f'{value:g}'


def _range(spec: ParamSpec) -> str:
    if spec.choices is not None:
        return ', '.join(f'`{c}`' for c in spec.choices)
    if spec.min_value is not None and spec.max_value is not None:
        span = f'{_number(spec.min_value)} .. {_number(spec.max_value)}'
        return f'{spec.array_length} x ({span})' if spec.array_length else span
    return ''


def markdown_table() -> str:
    """Return the markdown parameter table (one row per parameter, table order)."""
    rows = ['| parameter | type | default | range / choices | change at runtime | '
            'description |',
            '|---|---|---|---|---|---|']
    for spec in PARAMETERS:
        live = 'no (restart)' if spec.read_only else 'yes'
        default = _yaml_value(ros_default(spec))
        description = spec.description.replace('|', '\\|')
        rows.append(f'| `{spec.name}` | {spec.type} | `{default}` | {_range(spec)} | {live} | '
                    f'{description} |')
    return '\n'.join(rows) + '\n'


def params_yaml() -> str:
    """Return a ROS 2 params file with every parameter at its default, one comment each."""
    lines = ['# Parameters of the leaf_disease_ros detector node (ROS 2 params file).',
             '# Generated from perception/config.py by tools/gen_param_docs.py --yaml; the',
             '# table of docs/parameters.md explains each one. Doubles may be written 1 or',
             '# 1.0; whole numbers must be written without a decimal point.',
             '/**:',
             '  ros__parameters:']
    group = None
    for spec in PARAMETERS:
        if spec.group != group:
            group = spec.group
            lines.append(f'    # --- {group} ---')
        notes = [_range(spec).replace('`', '')] + (['read-only'] if spec.read_only else [])
        notes = [note for note in notes if note]
        comment = spec.description + (f" [{'; '.join(notes)}]" if notes else '')
        lines.append(f'    # {comment}')
        lines.append(f'    {spec.name}: {_yaml_value(ros_default(spec))}')
    return '\n'.join(lines) + '\n'


def main(argv: Optional[List[str]] = None) -> int:
    """Print the markdown table, or the params file with ``--yaml``."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--yaml', action='store_true',
                        help='print config/detector.yaml instead of the markdown table')
    args = parser.parse_args(argv)
    sys.stdout.write(params_yaml() if args.yaml else markdown_table())
    return 0


if __name__ == '__main__':
    sys.exit(main())
