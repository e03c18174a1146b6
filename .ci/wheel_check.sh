#!/usr/bin/env bash
# The installed package, not the source tree: build the wheel, install it (not editable) into a
# fresh venv and run a short search on `digits` with the packaged `default` space from there.
# The fresh venv takes the dependencies from the project's venv through a .pth file, as
# installing torch and the rest again would take minutes; morphnas itself comes from the wheel only.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$(cd "${VENV:-.venv}" && pwd)/bin/python"  # the project's venv (make install)
unset PYTHONPATH
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Built in the work tree, which it must leave as it was (no build/, no *.egg-info).
tree_state() { git status --porcelain --ignored --untracked-files=all -- . ':!.venv' | grep -v __pycache__ || true; }
before=$(tree_state)
"$PY" -m pip wheel . --no-deps --quiet -w "$work/dist"
after=$(tree_state)
if [ "$before" != "$after" ]; then
    echo "pip wheel . left files in the work tree:"; diff <(echo "$before") <(echo "$after") || true; exit 1
fi

"$PY" -m venv "$work/venv"
venv_site=$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$venv_site/project_dependencies.pth"
"$work/venv/bin/python" -m pip install --quiet --no-deps "$work"/dist/morphnas-*.whl

cd "$work"  # away from the source tree
"$work/venv/bin/python" -c 'import morphnas, sys; assert morphnas.__file__.startswith(sys.prefix), morphnas.__file__'
"$work/venv/bin/morphnas" search --space default --dataset digits --generations 1 --children 2 --time-budget 20s \
    --workdir "$work/runs" --json > "$work/search.json"
"$work/venv/bin/python" -c '
import json, sys
summary = json.load(open(sys.argv[1]))
trials, best, error = summary["n_trials"], summary["best_trial"], summary["test_error"]
print(f"wheel check: morphnas search from the installed wheel: {trials} trials, best trial {best}, test error {error:.2%}")
' "$work/search.json"
