"""Reading the pickles that MMF-style feature files contain, without running their code.

`<id>_info.npy` files are `np.save` of a dict (an object array, i.e. a pickle) and MMF's
LMDB values are pickled dicts. Unpickling calls whatever callable the file names, so a
feature file downloaded from somewhere is a program: numpy with pickles allowed, or the
pickle module's own loader, would run `os.system` if the file asked for it. `Restricted`
resolves only the few globals that rebuild numpy arrays, dtypes and scalars plus plain
builtin values; any other global stops the read with an `UnsafePickle` error naming it.
"""

from __future__ import annotations

import io
import pickle

import numpy as np

from vlpdist.errors import SourceError

_NUMPY_CORE = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"
_BUILTIN_TYPES = {
    "dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray",
    "str", "int", "float", "complex", "bool", "slice", "range",
}  # fmt: skip
# (module, name) -> (module to import, name); numpy.core vs numpy._core differ by version,
# and Python 2 pickles name builtins "__builtin__".
_ALLOWED: dict[tuple[str, str], tuple[str, str]] = {
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("_codecs", "encode"): ("_codecs", "encode"),  # protocol-2 pickles of bytes
    ("collections", "OrderedDict"): ("collections", "OrderedDict"),
}
for _core in ("numpy.core", "numpy._core"):
    for _name in ("_reconstruct", "scalar"):
        _ALLOWED[(f"{_core}.multiarray", _name)] = (f"{_NUMPY_CORE}.multiarray", _name)
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = (f"{_NUMPY_CORE}.numeric", "_frombuffer")
for _mod in ("builtins", "__builtin__"):
    for _name in _BUILTIN_TYPES:
        _ALLOWED[(_mod, _name)] = ("builtins", _name)


class UnsafePickle(SourceError):  # noqa: N818
    """The pickle names a global outside the allow-list: stop the build, don't skip."""


class CorruptPickle(SourceError):  # noqa: N818
    """Truncated or garbage bytes: one bad file, counted as a skip by the readers."""


class Restricted(pickle.Unpickler):
    """An unpickler that can only rebuild numpy arrays/dtypes/scalars and builtin values."""

    def __init__(self, file, what: str = "pickle"):
        # latin1: Python 2 pickles of numpy arrays hold raw bytes in `str` objects
        super().__init__(file, encoding="latin1")
        self.what = what

    def find_class(self, module: str, name: str):
        target = _ALLOWED.get((module, name))
        if target is None:
            raise UnsafePickle(
                f"{self.what}: refusing to unpickle '{module}.{name}': only numpy arrays and "
                "plain values are allowed in feature files (the pickle may be malicious)"
            )
        return super().find_class(*target)


def loads(data: bytes, what: str = "pickle"):
    """Restricted unpickling of `data` (`what` names it in errors)."""
    try:
        return Restricted(io.BytesIO(data), what).load()
    except UnsafePickle:
        raise
    except Exception as e:  # truncated or garbage bytes: whatever the parser raised
        raise CorruptPickle(f"{what}: not a readable pickle ({type(e).__name__}: {e})") from None


def load_npy_object(data: bytes, what: str):
    """The value stored by `np.save(path, obj)` for a non-array `obj` (e.g. MMF's info dict).

    The .npy header is parsed with numpy; an object array's payload is a pickle, which goes
    through `Restricted`. Plain (non-object) arrays are read with allow_pickle=False.
    """
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except ValueError as e:
        raise CorruptPickle(f"{what}: not a .npy file ({e})") from None
    if not dtype.hasobject:
        return np.load(io.BytesIO(data), allow_pickle=False)
    arr = loads(f.read(), what)
    if isinstance(arr, np.ndarray) and arr.shape == () and shape == ():
        return arr.item()  # np.save(dict) stores a 0-d object array
    return arr
