"""Malformed lab files, drawn by hypothesis: labwarden's own error, or a lab, comes out; nothing else.

Each example takes the real files of topologies/homelab and topologies/airplane
(compose.yaml, policy.yaml, the live example inventory), swaps values of the YAML tree
for junk (wrong types, null, NaN, unknown keys, names from elsewhere in the lab), or
writes bytes no loader should take (binary, truncated, duplicate keys, alias bombs), and
loads the lab. A ConfigError (any LabwardenError) or a loaded lab passes; any other
exception is a crash a user would see as a traceback.
"""

import math
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labwarden.declared.fields import MAX_BYTES
from labwarden.declared.inventory import load_inventory
from labwarden.declared.lab import load_lab
from labwarden.errors import ConfigError, LabwardenError

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"
LABS = ("homelab", "airplane")
FILES = ("compose.yaml", "policy.yaml")
FUZZ = settings(max_examples=120, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def labs(tmp_path_factory):
    """A copy of each lab folder (and its documents, parsed), written over by each example."""
    root = tmp_path_factory.mktemp("labs")
    found = {}
    for name in LABS:
        shutil.copytree(TOPOLOGIES / name, root / name)
        found[name] = {f: yaml.safe_load((TOPOLOGIES / name / f).read_text()) for f in FILES}
    return root, found


def loads_or_refuses(load):
    """Run a loader: a result, or labwarden's own error with a file, field and problem."""
    try:
        return load()
    except ConfigError as err:
        assert err.file and err.field is not None and err.problem, err
        assert "Traceback" not in str(err)
        return err
    except LabwardenError as err:
        return err


def paths(doc, here=()):
    """Every place in a YAML tree, as a tuple of keys and indexes."""
    yield here
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from paths(value, here + (key,))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from paths(value, here + (i,))


NAMES = ["web", "router", "laptop", "servers", "wan", "cabin", "gateway", "any", "icmp", "tcp/22",
         "udp/53", "198.18.10.10", "198.18.10.0/24", "8.8.8.8", "0.0.0.0/0", "geo-satellite", "300 ms",
         "p95 < 5 ms", "laptop -> web icmp", "x-labwarden", "ipv4_address", "impair", "allow", "-1"]
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
           | st.sampled_from([math.nan, math.inf, -math.inf, 1e308]) | st.text(max_size=12)
           | st.sampled_from(NAMES) | st.binary(max_size=6))
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(NAMES) | st.integers(0, 3) | st.none(), inner, max_size=3),
                    max_leaves=8)


def mutated(doc, data):
    """doc with one to three places replaced by junk, deleted, or given an unknown key."""
    doc = yaml.safe_load(yaml.safe_dump(doc))  # a deep copy
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        where = data.draw(st.sampled_from(list(paths(doc))), label="where")
        if not where:
            return data.draw(junk, label="the whole document")
        parent = doc
        for step in where[:-1]:
            parent = parent[step]
        action = data.draw(st.sampled_from(["replace", "replace", "delete", "unknown key"]), label="action")
        if action == "replace":
            parent[where[-1]] = data.draw(junk, label="junk")
        elif action == "delete":
            del parent[where[-1]]
        elif isinstance(parent[where[-1]], dict):
            parent[where[-1]][data.draw(st.sampled_from(NAMES), label="key")] = data.draw(junk)
    return doc


def write(folder: Path, name: str, doc) -> None:
    (folder / name).write_text(yaml.safe_dump(doc, allow_unicode=True))


@FUZZ
@given(data=st.data())
def test_mutated_lab_files_load_or_say_what_is_wrong(labs, data):
    root, docs = labs
    lab = data.draw(st.sampled_from(LABS), label="lab")
    file = data.draw(st.sampled_from(FILES), label="file")
    folder = root / lab
    try:
        write(folder, file, mutated(docs[lab][file], data))
        loads_or_refuses(lambda: load_lab(folder))
    finally:
        write(folder, file, docs[lab][file])


@pytest.fixture(scope="module")
def homelab():
    return load_lab(TOPOLOGIES / "homelab").topology, yaml.safe_load((TOPOLOGIES / "homelab" /
                                                                      "live.example.yaml").read_text())


@FUZZ
@given(data=st.data())
def test_mutated_inventories_load_or_say_what_is_wrong(labs, homelab, data):
    root, _ = labs
    topology, example = homelab
    inventory = root / "live.yaml"
    write(root, "live.yaml", mutated(example, data))
    loads_or_refuses(lambda: load_inventory(inventory, topology))


ENDS = ["laptop", "personal/laptop", "servers/web", "web", "router@wan", "router@nowhere", "nobody",
        "198.18.10.10", "8.8.8.8", "10.0.0.1/8", "wan/web", "", "->"]
MEASURES = ["icmp", "tcp/22", "tcp/0", "tcp/70000", "http/80", "http/80/index.html", "udp/53", "http/x", ""]
LIMITS = st.sampled_from(["p95 < 5 ms", "loss < 2%", "ttfb p95 < 1 s", "p95 < 5 %", "loss < 2 ms",
                          "jitter <= 0", "p95 < " + "9" * 400, "mean < .5 s", "p42 < 1 ms", "p95"]) | scalars
budget_paths = (st.tuples(st.sampled_from(ENDS), st.sampled_from(ENDS), st.sampled_from(MEASURES))
                .map(lambda t: f"{t[0]} -> {t[1]} {t[2]}") | st.text(max_size=20))
budget_values = (LIMITS | st.lists(LIMITS, max_size=3)
                 | st.fixed_dictionaries({}, optional={"limits": LIMITS | st.lists(LIMITS, max_size=3),
                                                       "samples": junk, "interval": junk, "timeout": junk,
                                                       "unknown": junk}))


@FUZZ
@given(data=st.data(), budgets=st.dictionaries(budget_paths, budget_values, min_size=1, max_size=3))
def test_drawn_budgets_load_or_say_what_is_wrong(labs, data, budgets):
    root, docs = labs
    folder = root / "homelab"
    try:
        write(folder, "policy.yaml", {**docs["homelab"]["policy.yaml"], "budgets": budgets})
        loads_or_refuses(lambda: load_lab(folder))
    finally:
        write(folder, "policy.yaml", docs["homelab"]["policy.yaml"])


def bombs():
    """A billion laughs: nine levels of nine aliases each."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    return "\n".join(lines) + "\nservices: *a9\n"


BAD_BYTES = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.sampled_from([b"\xff\xfe\x00\x00", b"services: \xe9t\xe9\n", b"\x00" * 64, b"a: &a [*a]\n",
                     bombs().encode(), b"[" * 3000, b"- " * 3000, b"a: !!python/object:os.system x\n",
                     b"a: !reset []\n", b"services:\n  web: 1\n  web: 2\n", b"x" * (MAX_BYTES + 1)]),
)


@FUZZ
@given(data=st.data(), garbage=BAD_BYTES)
def test_binary_truncated_and_hostile_files_are_refused_with_a_config_error(labs, data, garbage):
    root, docs = labs
    file = data.draw(st.sampled_from(FILES), label="file")
    folder = root / "homelab"
    original = (TOPOLOGIES / "homelab" / file).read_bytes()
    cut = data.draw(st.integers(0, len(original)), label="keep this many bytes, then the garbage")
    try:
        (folder / file).write_bytes(original[:cut] + garbage)
        loads_or_refuses(lambda: load_lab(folder))
    finally:
        (folder / file).write_bytes(original)
