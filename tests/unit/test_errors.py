"""Every error the project defines derives from ResenderError, so callers catch one type."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import resender
from resender.errors import ResenderError


def project_exception_classes() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for module_info in pkgutil.walk_packages(resender.__path__, prefix="resender."):
        if module_info.name.endswith(".__main__"):
            continue  # importing it runs the command
        module = importlib.import_module(module_info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == module.__name__:
                found.append(value)
    return found


def test_every_project_error_derives_from_the_one_base() -> None:
    classes = project_exception_classes()

    assert len(classes) >= 10  # the walk found the modules
    strays = [f"{cls.__module__}.{cls.__qualname__}" for cls in classes if not issubclass(cls, ResenderError)]
    assert strays == []
