"""
Typed reads of JSON documents: the one field reader of the model card and the engine sidecar.

A :class:`FieldReader` wraps one JSON object and the function that turns
``(dotted field name, reason)`` into the caller's error, so every malformed or
missing field is reported the same way (the file, the field, what was expected and
what was found), whatever document it is in. Nested objects are read through
:meth:`FieldReader.section`, which prefixes the field names (``input.height_px``).
"""

import math
import re
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from leaf_disease_ros.perception.errors import LeafDiseaseError

ErrorFactory = Callable[[str, str], LeafDiseaseError]
_REQUIRED = object()  # sentinel: the field has no default
_SHA256_RE = re.compile(r'^[0-9a-f]{64}$')


def is_sha256(value: Any) -> bool:
    """Return whether ``value`` is 64 lowercase hex digits."""
    return isinstance(value, str) and bool(_SHA256_RE.match(value))


class FieldReader:
    """Reads the fields of one JSON object; every problem is raised through ``error``."""

    def __init__(self, doc: Any, error: ErrorFactory, prefix: str = '',
                 missing: Optional[Callable[[str], LeafDiseaseError]] = None) -> None:
        """
        Wrap ``doc``.

        :param doc: the decoded JSON value; anything but an object is an error.
        :param error: ``(field, reason) -> exception`` of the caller's type.
        :param prefix: prepended to field names (``'input.'`` for a section).
        :param missing: ``field -> exception`` for a missing field; default
            ``error(field, 'is missing')``.
        """
        self._error = error
        self._missing = missing
        self._prefix = prefix
        if not isinstance(doc, dict):
            raise error(prefix.rstrip('.') or '<root>', 'expected a JSON object')
        self.doc: Dict[str, Any] = doc

    def name(self, key: str) -> str:
        """Return the dotted name of ``key`` in the document."""
        return self._prefix + key

    def fail(self, key: str, reason: str) -> LeafDiseaseError:
        """Return the caller's error for ``key`` (to raise)."""
        return self._error(self.name(key), reason)

    def raw(self, key: str, default: Any = _REQUIRED) -> Any:
        """Return the value of ``key`` as decoded, or ``default`` (required without one)."""
        if key in self.doc:
            return self.doc[key]
        if default is _REQUIRED:
            if self._missing is not None:
                raise self._missing(self.name(key))
            raise self.fail(key, 'is missing')
        return default

    def section(self, key: str) -> 'FieldReader':
        """Return a reader of the object at ``key`` (required)."""
        value = self.raw(key)
        if not isinstance(value, dict):
            raise self.fail(key, f'expected an object, got {type(value).__name__}')
        return FieldReader(value, self._error, self.name(key) + '.', self._missing)

    def mapping(self, key: str, default: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        """Return the free-form object at ``key`` as a dict (``{}`` when absent)."""
        value = self.raw(key, {} if default is None else default)
        if not isinstance(value, dict):
            raise self.fail(key, 'expected an object')
        return dict(value)

    def text(self, key: str, default: Any = _REQUIRED, allow_empty: bool = False) -> str:
        """Return a string field (non-empty unless ``allow_empty``)."""
        value = self.raw(key, default)
        if not isinstance(value, str) or (not value and not allow_empty):
            raise self.fail(key, f'expected a non-empty string, got {value!r}')
        return value

    def number(self, key: str, default: Any = _REQUIRED, *, positive: bool = False,
               minimum: Optional[float] = None, maximum: Optional[float] = None) -> float:
        """Return a finite number field, optionally > 0 or within [minimum, maximum]."""
        return self.check_number(key, self.raw(key, default), positive=positive,
                                 minimum=minimum, maximum=maximum)

    def check_number(self, key: str, value: Any, *, positive: bool = False,
                     minimum: Optional[float] = None, maximum: Optional[float] = None
                     ) -> float:
        """Validate ``value`` as the number field ``key`` and return it as float."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, f'expected a number, got {value!r}')
        number = float(value)
        if not math.isfinite(number):
            raise self.fail(key, f'{value!r} is not finite')
        if positive and number <= 0.0:
            raise self.fail(key, f'must be > 0, got {value!r}')
        below = minimum is not None and number < minimum
        above = maximum is not None and number > maximum
        if below or above:
            low = '-inf' if minimum is None else f'{minimum:g}'
            high = 'inf' if maximum is None else f'{maximum:g}'
            raise self.fail(key, f'must be within [{low}, {high}], got {value!r}')
        return number

    def integer(self, key: str, default: Any = _REQUIRED, minimum: int = 0) -> int:
        """Return an integer field >= ``minimum`` (booleans are not integers)."""
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f'expected an integer >= {minimum}, got {value!r}')
        return value

    def optional_integer(self, key: str, minimum: int = 0) -> Optional[int]:
        """Return an integer field >= ``minimum``, or None when absent or null."""
        if self.doc.get(key) is None:
            return None
        return self.integer(key, minimum=minimum)

    def choice(self, key: str, choices: Sequence[str], default: Any = _REQUIRED) -> str:
        """Return a field that must be one of ``choices``."""
        value = self.raw(key, default)
        if value not in choices:
            raise self.fail(key, f'{value!r} is not one of {", ".join(choices)}')
        return value

    def numbers(self, key: str, count: int, *, positive: bool = False,
                what: str = '') -> Tuple[float, ...]:
        """Return a list field of exactly ``count`` finite numbers."""
        value = self.raw(key)
        if not isinstance(value, (list, tuple)) or len(value) != count:
            raise self.fail(key, f'expected {count} numbers{what}, got {value!r}')
        return tuple(self.check_number(key, v, positive=positive) for v in value)

    def integers(self, key: str, count: int, minimum: int = 0) -> Tuple[int, ...]:
        """Return a list field of exactly ``count`` integers >= ``minimum``."""
        value = self.raw(key)
        if (not isinstance(value, (list, tuple)) or len(value) != count
                or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum
                       for v in value)):
            raise self.fail(key, f'expected {count} integers >= {minimum}, got {value!r}')
        return tuple(value)

    def sha256(self, key: str, default: Any = _REQUIRED) -> str:
        """Return a sha256 field (64 lowercase hex digits)."""
        value = self.raw(key, default)
        if not is_sha256(value):
            raise self.fail(key, 'expected 64 lowercase hex digits')
        return value


def strict_json(value: Any) -> Any:
    """Return ``value`` with NaN and infinities as None (strict JSON: RFC 8259 has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value
