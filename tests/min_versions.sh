#!/usr/bin/env bash
# Are pyproject.toml's lower bounds true? Install labwarden into a fresh venv with each
# dependency held at its lower bound (`name>=X` becomes the constraint `name==X`), then
# import the plugin and run the unit and plugin tests (no Docker needed). Not part of CI:
# it installs from PyPI and takes a few minutes.
#
#   tests/min_versions.sh                         every bound at once (runtime and dev extras)
#   tests/min_versions.sh pytest-asyncio          only that bound; the rest at their newest
#   tests/min_versions.sh pytest-asyncio==0.25.3  a version below the bound: should fail
#   tests/min_versions.sh -k test_policy ...      arguments after the packages go to pytest
#
# Exit status: 0 every check passed; 1 a check failed (or pip could not install the
# set: a bound that contradicts another dependency's requirement); 2 bad usage.
# An unknown ini option is an error here (-W error::pytest.PytestConfigWarning): a
# pytest-asyncio that ignores asyncio_default_test_loop_scope fails, as it should.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}

pins=()
while [ $# -gt 0 ] && [[ $1 != -* ]]; do pins+=("$1"); shift; done

scratch=$(mktemp -d "${TMPDIR:-/tmp}/labwarden-minver-XXXXXX")
trap 'rm -rf "$scratch"' EXIT

# the constraints: one `name==version` line per lower bound asked for
"$python" - "$root/pyproject.toml" "${pins[@]}" > "$scratch/constraints.txt" <<'EOF'
import re, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
requirements = list(project["dependencies"])
for extra in ("dev",):
    requirements += project["optional-dependencies"][extra]
bounds = {}
for req in requirements:
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?\s*>=\s*([0-9][0-9A-Za-z.]*)\s*(?:;.*)?", req.strip())
    if m is None:
        sys.exit(f"min_versions: {req!r} in pyproject.toml has no `>=` lower bound to check")
    bounds[m[1].lower()] = m[2]
asked = sys.argv[2:] or sorted(bounds)
for spec in asked:
    name, _, version = spec.partition("==")
    if name.lower() not in bounds:
        sys.exit(f"min_versions: {name} is not a dependency of labwarden (known: {', '.join(sorted(bounds))})")
    print(f"{name}=={version or bounds[name.lower()]}")
EOF
echo "min_versions: held at:" $(cat "$scratch/constraints.txt")
# a version asked for by hand may lie below labwarden's own bound: installed over it afterwards
forced=()
for spec in "${pins[@]}"; do if [[ $spec == *==* ]]; then forced+=("$spec"); fi; done
if [ ${#forced[@]} -gt 0 ]; then printf '%s\n' "${forced[@]}"; fi > "$scratch/forced.txt"
if [ ${#forced[@]} -gt 0 ]; then
  grep -v -i -F -f <(printf '%s==\n' "${forced[@]%%==*}") "$scratch/constraints.txt" > "$scratch/held.txt" || true
  mv "$scratch/held.txt" "$scratch/constraints.txt"
fi

"$python" -m venv "$scratch/venv"
pip=("$scratch/venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
if ! "${pip[@]}" install -c "$scratch/constraints.txt" -e "$root[dev]"; then
  # again, to say why (pip explains a conflict only when not quiet)
  "$scratch/venv/bin/python" -m pip install --dry-run -c "$scratch/constraints.txt" -e "$root[dev]" 2>&1 \
    | sed -n '/conflict is caused by/,/^$/p'
  echo "min_versions: pip could not install labwarden with these versions"; exit 1
fi
if [ ${#forced[@]} -gt 0 ]; then
  "${pip[@]}" install "${forced[@]}" || true  # pip names the requirement this breaks
fi
"$scratch/venv/bin/python" -m pip freeze --exclude-editable > "$scratch/installed.txt"
echo "min_versions: installed:" $(grep -i -F -f <(cut -d= -f1 "$scratch/constraints.txt" "$scratch/forced.txt") \
  "$scratch/installed.txt")

cd "$root"
"$scratch/venv/bin/python" -c "import labwarden.plugin, labwarden.cli; print('min_versions: plugin imports')"
"$scratch/venv/bin/python" -m pytest tests/unit tests/plugin -q -p no:cacheprovider \
  -W error::pytest.PytestConfigWarning "$@"
