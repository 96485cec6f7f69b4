#!/usr/bin/env bash
# Install exactly the dependency floors (constraints/floors.txt) in .venv-floors and run the
# fast tests on them, so that the lower bounds in setup.cfg are versions the code runs on.
# Run from anywhere; it works in the repository root. Arguments, if any, replace the test list.
#   bash tools/test-floors.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CONSTRAINTS=constraints/floors.txt
VENV=.venv-floors
# The tests that exercise what set the floors (the ledger's stale-trial callback and
# PostgreSQL driver, the batch-norm layer, the data and the model); the rest of the suite
# runs on the newest versions.
TESTS=(tests/test_data.py tests/test_model.py tests/test_layers.py tests/test_ledger.py
       tests/test_processes.py)
if [ "$#" -gt 0 ]; then
    TESTS=("$@")
fi

start=$SECONDS
echo "test-floors: $(python3 --version) in $VENV, constraints $CONSTRAINTS"
python3 -m venv --clear "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -c "$CONSTRAINTS" -e '.[test,postgres]'
"$VENV/bin/pip" check --disable-pip-version-check
installed=$SECONDS

# The floors are setup.cfg's lower bounds, and every direct dependency is installed at its
# floor: pip may not pick anything else.
"$VENV/bin/python" - "$CONSTRAINTS" setup.cfg <<'EOF'
import configparser
import re
import sys
from importlib.metadata import PackageNotFoundError, version

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

constraints_path, setup_cfg = sys.argv[1:]
floors = {}
for line in open(constraints_path, encoding="utf-8"):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    match = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+!-]+)", line)
    if match is None:
        sys.exit(f"test-floors: not a name==version line in {constraints_path}: {line!r}")
    floors[canonicalize_name(match[1])] = match[2]

config = configparser.ConfigParser()
config.read(setup_cfg, encoding="utf-8")
lines = config["options"]["install_requires"].splitlines()
for extra in ("test", "postgres"):  # The extras installed above ("bench" is not).
    lines += config["options.extras_require"][extra].splitlines()
declared = {}
for line in filter(None, (line.strip() for line in lines)):
    requirement = Requirement(line)
    lower = [s.version for s in requirement.specifier if s.operator == ">="]
    declared[canonicalize_name(requirement.name)] = lower[0] if len(lower) == 1 else None
if {n: Version(v) for n, v in floors.items()} != {
        n: v and Version(v) for n, v in declared.items()}:
    sys.exit(f"test-floors: {setup_cfg} lower bounds {declared} are not the floors in "
             f"{constraints_path} {floors}")

wrong = []
for name, floor in floors.items():
    try:
        got = version(name)
    except PackageNotFoundError:
        got = "not installed"
    ok = got != "not installed" and Version(got) == Version(floor)
    print(f"  {name:<18} floor {floor:<10} installed {got}{'' if ok else '   <-- WRONG'}")
    if not ok:
        wrong.append(name)
if wrong:
    sys.exit(f"test-floors: not installed at their floors: {', '.join(wrong)}")
print("test-floors: every direct dependency is at its floor")
EOF

"$VENV/bin/pytest" -q -p no:cacheprovider "${TESTS[@]}"
end=$SECONDS
echo "test-floors: passed in $((end - start)) s (install $((installed - start)) s," \
     "tests $((end - installed)) s)"
