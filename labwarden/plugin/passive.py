"""Whether labwarden takes part in a pytest run: installed, it must not change anyone else's.

The plugin is registered in every pytest run of the environment it is installed in
(the `pytest11` entry point). It stays passive, adding nothing but its `--lw-` options,
fixtures and markers, unless the run uses it:

- a `--lw-` option differs from its default (the command line, `addopts` or
  `PYTEST_ADDOPTS`): known at configure time, so the lab is checked before collection;
- or a collected test uses one of labwarden's fixtures (`lab`, `matrix`,
  `labwarden_policy`, ... directly or through another fixture), or carries the `lab`
  marker: known when the collection ends (after `-k`/`-m` deselection).

Only then does it load and check the lab, turn SIGTERM into an interrupt, point the
JUnit XML at the report folder and write labwarden.json and labwarden.html. In a
passive run the junit.xml it pointed at (before anyone could know) is withdrawn
before anything is written; a `--junitxml` of the user's own is never touched.
"""

import pytest
from _pytest.junitxml import xml_key  # the LogXML instance of the run; no public name for it

_ACTIVE = pytest.StashKey[bool]()
_DEFAULTED_XML = pytest.StashKey[bool]()
PACKAGE = "labwarden."


def is_active(config) -> bool:
    return config.stash.get(_ACTIVE, False)


def mark_active(config) -> None:
    config.stash[_ACTIVE] = True


def explicit(config, defaults: dict) -> bool:
    """A `--lw-` option was given a value other than its default."""
    return any(config.getoption(dest) != default for dest, default in defaults.items())


def uses_labwarden(item) -> bool:
    """The test needs one of labwarden's fixtures (through any other), or is marked `lab`."""
    if item.get_closest_marker("lab") is not None:
        return True
    info = getattr(item, "_fixtureinfo", None)  # Function items: the whole fixture closure
    if info is None:
        return False
    return any(getattr(d.func, "__module__", "").startswith(PACKAGE)
               for defs in info.name2fixturedefs.values() for d in defs)


def default_junit(config, path) -> None:
    """JUnit XML into the report folder unless the user names a file: set at configure
    time (pytest's junitxml starts from it then), withdrawn by `withdraw_junit` if passive."""
    if hasattr(config.option, "xmlpath") and not config.option.xmlpath:
        config.option.xmlpath = str(path)
        config.stash[_DEFAULTED_XML] = True


def withdraw_junit(config) -> None:
    """Undo `default_junit`: the run writes no junit.xml (unless the user asked for one)."""
    if not config.stash.get(_DEFAULTED_XML, False):
        return
    config.stash[_DEFAULTED_XML] = False
    config.option.xmlpath = None
    xml = config.stash.get(xml_key, None)
    if xml is not None:
        del config.stash[xml_key]
        config.pluginmanager.unregister(xml)
