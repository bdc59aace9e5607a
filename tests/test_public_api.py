"""The public API is what __all__ says, no more and no less."""

from __future__ import annotations

import inspect

import pymap_admin
from pymap_admin import errors


def test_all_is_exactly_the_public_names() -> None:
    public = {name for name, value in vars(pymap_admin).items()
              if not name.startswith("_") and not inspect.ismodule(value)}
    assert set(pymap_admin.__all__) == public
    for name in pymap_admin.__all__:
        assert getattr(pymap_admin, name) is not None


def test_every_exception_is_in_the_tree_and_exported_by_its_module() -> None:
    classes = [value for value in vars(errors).values()
               if inspect.isclass(value) and issubclass(value, BaseException)
               and value.__module__ == errors.__name__]
    for cls in classes:
        assert issubclass(cls, errors.AdminError), cls
    exported = set(errors.__all__)
    missing = {cls.__name__ for cls in classes} - exported
    assert not missing, f"not in pymap_admin.errors.__all__: {sorted(missing)}"
